"""``fast``: 128-bit ring, COMPLEX packing (half the ciphertexts), NO provable flooding:
shares carry OpenFHE's fixed 2^20 smudging noise only."""

from fedsim.crypto.profiles import Profile, register_profile

register_profile(Profile(
    "fast", security_bits=128, complex_packing=True, flooding=False,
    summary="128-bit, COMPLEX packing, no flooding: not provably secure decryption",
))
