"""``test``: like ``secure`` on an insecure 1024 ring, for unit tests only."""

from fedsim.crypto.profiles import Profile, register_profile

register_profile(Profile(
    "test", security_bits=0, ring_dim=1024, complex_packing=False, flooding=True,
    insecure=True, summary="INSECURE 1024 ring for tests",
))
