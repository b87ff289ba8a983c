"""``secure`` (default): 128-bit ring, REAL packing, OpenFHE's noise-flooding decryption."""

from fedsim.crypto.profiles import Profile, register_profile

register_profile(Profile(
    "secure", security_bits=128, complex_packing=False, flooding=True,
    summary="128-bit, REAL packing, flooded decryption shares",
))
