"""CKKS contexts: one OpenFHE ``CryptoContext`` every party can rebuild from bytes.

A context is built from a registered profile (`fedsim.crypto.profiles`): depth 0,
FIXEDMANUAL scaling, first modulus 60 bits, scaling modulus 50 bits, BV key switching,
PKE + KEYSWITCH + LEVELEDSHE + MULTIPARTY, one 60-bit RNS tower. The built-in profiles:

* ``secure`` (default): 128-bit classic security (ring 4096), REAL packing, and OpenFHE's
  noise-flooding decryption for CKKS: a noise-estimation pass with throwaway keys runs
  the real aggregate (``max_contributors`` fresh ciphertexts plus one DP-noise
  ciphertext, under a joint key of ``max_key_holders`` parties), then the evaluation
  context is built with ``EXEC_EVALUATION``, ``SetNoiseEstimate`` and
  ``NOISE_FLOODING_DECRYPT``. OpenFHE then adds Gaussian noise of
  ``sigma = sqrt(12 * max_decryptions) * 2**(30/2) * 2**estimate`` to every partial
  decryption share (MultipartyDecryptLead and MultipartyDecryptMain), see FLOODING.md
  (this build takes no query count for CKKS, so the estimate passed to OpenFHE carries
  the ``sqrt(max_decryptions)`` factor).
  In this mode OpenFHE fixes the scale at 2**59 under a 60-bit modulus, so a decrypted
  slot is right only while ``|value| < 1``: ``value_bound`` is 0.5.
* ``fast``: the same ring, COMPLEX packing (two reals per slot, half the ciphertexts)
  and no provable flooding: shares carry OpenFHE's fixed 2**20 smudging noise only.
* ``test``: like ``secure`` on an insecure 1024 ring; refused unless ``allow_insecure``.

The noise estimate is random (throwaway keys), so a context is created ONCE and shipped
to every process with ``to_bytes``; ``from_bytes`` rebuilds it from its parameters and
refuses bytes that do not rebuild identically.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import openfhe as fhe

from fedsim.crypto import _secret_key
from fedsim.crypto.flooding import (
    OPENFHE_STATISTICAL_SECURITY,
    bound_bits,
    flooding_sigma,
)
from fedsim.crypto.profiles import Profile, get_profile
from fedsim.errors import CryptoError

FIRST_MOD_BITS = 60
SCALE_MOD_BITS = 50
FIXED_SHARE_SIGMA = 2.0**20  # OpenFHE NOISE_FLOODING::MP_SD, used without flooding
ERROR_SIGMAS = 8.0  # error_bound in standard deviations of the decrypted error

_MAGIC = b"FSCX"
_VERSION = 1
_HEAD = struct.Struct("<4sHI")


_SECURITY = {
    0: fhe.HEStd_NotSet,
    128: fhe.HEStd_128_classic,
    192: fhe.HEStd_192_classic,
    256: fhe.HEStd_256_classic,
}


@dataclass(frozen=True)
class _Meta:
    profile: str
    max_contributors: int
    max_key_holders: int
    max_decryptions: int
    measured_noise: float | None  # log2 std of the aggregate's noise; None without flooding
    statistical_security: int = OPENFHE_STATISTICAL_SECURITY


def _params(meta: _Meta, mode: Any) -> Any:
    spec = get_profile(meta.profile)
    p = fhe.CCParamsCKKSRNS()
    p.SetMultiplicativeDepth(0)
    p.SetScalingTechnique(fhe.FIXEDMANUAL)
    p.SetFirstModSize(FIRST_MOD_BITS)
    p.SetScalingModSize(SCALE_MOD_BITS)
    p.SetKeySwitchTechnique(fhe.BV)
    p.SetSecurityLevel(_SECURITY[spec.security_bits])
    if spec.ring_dim:
        p.SetRingDim(spec.ring_dim)
    p.SetCKKSDataType(fhe.COMPLEX if spec.complex_packing else fhe.REAL)
    if spec.flooding:
        p.SetDecryptionNoiseMode(fhe.NOISE_FLOODING_DECRYPT)
        p.SetExecutionMode(mode)
        if mode == fhe.EXEC_EVALUATION:
            # This build refuses SetNumAdversarialQueries and SetStatisticalSecurity for
            # CKKS (NOISE_FLOODING_MULTIPARTY only) and floods with
            # sigma = sqrt(12) * 2**(30/2) * 2**estimate. Folding sqrt(max_decryptions)
            # and 2**((s - 30)/2) into the estimate gives the documented
            # sqrt(12 * tau) * 2**(s/2) * B, with B the bound of `bound_bits`.
            ring = spec.ring_dim or _ring_of(meta)
            bound = bound_bits(meta.measured_noise, ring, meta.max_decryptions,
                               meta.statistical_security)
            p.SetNoiseEstimate(bound + 0.5 * math.log2(meta.max_decryptions)
                               + (meta.statistical_security - OPENFHE_STATISTICAL_SECURITY) / 2)
    return p


def _generate(params: Any) -> Any:
    cc = fhe.GenCryptoContext(params)
    for feature in (fhe.PKE, fhe.KEYSWITCH, fhe.LEVELEDSHE, fhe.MULTIPARTY):
        cc.Enable(feature)
    return cc


def _ring_of(meta: _Meta) -> int:
    """The ring OpenFHE picks for the profile's security level (no noise mode needed)."""
    if meta.profile not in _RINGS:
        mode = fhe.EXEC_NOISE_ESTIMATION if get_profile(meta.profile).flooding else None
        probe = _generate(_params(_Meta(meta.profile, 1, 2, 1, None), mode))
        _RINGS[meta.profile] = int(probe.GetRingDimension())
    return _RINGS[meta.profile]


_RINGS: dict[str, int] = {}


def estimate_noise(profile: str, contributors: int, holders: int) -> float:
    """log2 std of the noise of an aggregate of ``contributors`` fresh ciphertexts (plus
    one DP-noise ciphertext) under a throwaway joint key of ``holders`` parties: OpenFHE's
    estimation pass, run by whoever needs the number (the context's maker; every key
    holder, to check a context it is handed)."""
    return _estimate_noise(_Meta(profile, contributors, holders, 1, None))[0]


def _estimate_noise(meta: _Meta) -> tuple[float, int]:
    """log2 noise of the real aggregate under a throwaway joint key (OpenFHE's pass 1).

    Returns the estimate and the ring dimension it was measured in.
    """
    cc = _generate(_params(meta, fhe.EXEC_NOISE_ESTIMATION))
    keys = [cc.KeyGen()]
    for _ in range(meta.max_key_holders - 1):
        keys.append(cc.MultipartyKeyGen(keys[-1].publicKey))
    joint_secret = _secret_key.add([k.secretKey for k in keys])
    terms = meta.max_contributors + 1  # clients plus one DP-noise ciphertext
    rng = np.random.default_rng(0)
    plain = cc.MakeCKKSPackedPlaintext(rng.uniform(-0.5, 0.5, cc.GetBatchSize()) / terms)
    total = cc.Encrypt(keys[-1].publicKey, plain)
    for _ in range(terms - 1):
        cc.EvalAddInPlace(total, cc.Encrypt(keys[-1].publicKey, plain))
    estimate = float(cc.Decrypt(joint_secret, total).GetLogError())
    return estimate, int(cc.GetRingDimension())


def _find(tree: Any, key: str) -> Any:
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        tree = list(tree.values())
    if isinstance(tree, list):
        for item in tree:
            found = _find(item, key)
            if found is not None:
                return found
    return None


class CKKSContext:
    """An OpenFHE CKKS context built from a named profile; see the module docstring."""

    def __init__(self, meta: _Meta, cc: Any, cc_bytes: bytes) -> None:
        """Private: use ``create`` or ``from_bytes``."""
        self._meta = meta
        self._cc = cc
        self._cc_bytes = cc_bytes
        spec = get_profile(meta.profile)
        self._spec = spec
        self._slots = int(cc.GetBatchSize())
        self._ring_dim = int(cc.GetRingDimension())
        self._scale = float(cc.GetScalingFactorReal(0))
        modulus = float(cc.GetModulusCKKS())
        if spec.flooding:
            frame = json.loads(fhe.Serialize(cc, fhe.JSON))
            if _find(frame, "dnm") != int(fhe.NOISE_FLOODING_DECRYPT) or _find(frame, "exm") != int(
                fhe.EXEC_EVALUATION
            ):
                raise CryptoError("context lost its noise-flooding decryption settings")
            self._share_sigma = float(_find(frame, "fdp"))
            expected = self.flooding_sigma_for(meta.measured_noise)
            if not math.isclose(self._share_sigma, expected, rel_tol=1e-9):
                raise CryptoError(
                    f"OpenFHE floods with sigma {self._share_sigma:.4g}, not the documented "
                    f"sqrt(12 tau) 2^(s/2) B = {expected:.4g}"
                )
        else:
            self._share_sigma = FIXED_SHARE_SIGMA
        # A slot of magnitude B can put a coefficient at B (REAL) or sqrt(2) B (COMPLEX);
        # the modulus wraps coefficients at q/2. Keep half of that as margin.
        growth = math.sqrt(2.0) if spec.complex_packing else 1.0
        self._value_bound = float(f"{modulus / (2 * self._scale * growth) / 2:.3g}")
        # The decrypted error is dominated by the shares' noise. Measured (FLOODING.md):
        # each share adds sigma * sqrt(N/2) / scale per value, and REAL decoding adds as
        # much again (OpenFHE matches the imaginary-part noise), so a value of a fusion
        # of K shares errs by sqrt(K * N) * sigma / scale (REAL), sqrt(K * N / 2) (COMPLEX).
        spread = meta.max_key_holders * self._ring_dim / (2 if spec.complex_packing else 1)
        per_slot = math.sqrt(spread) * self._share_sigma
        self._error_bound = ERROR_SIGMAS * per_slot / self._scale

    @classmethod
    def create(
        cls,
        profile: str = "secure",
        *,
        allow_insecure: bool = False,
        max_contributors: int = 64,
        max_key_holders: int = 8,
        max_decryptions: int = 1 << 20,
        statistical_security: int = OPENFHE_STATISTICAL_SECURITY,
    ) -> CKKSContext:
        """Build a context from a profile name.

        ``max_contributors``: most ciphertexts one aggregate sums (a DP-noise ciphertext
        comes on top). ``max_key_holders``: most key holders sharing the key.
        ``max_decryptions``: ciphertexts decrypted under one key over its life (rounds
        times ciphertexts per round); flooding noise grows with its square root.
        ``statistical_security``: s of the flooding (at least 30, OpenFHE's minimum);
        each 2 bits more cost one bit of precision.
        """
        spec = get_profile(profile)
        if spec.insecure and not allow_insecure:
            raise CryptoError(
                f"crypto profile {profile!r} is insecure (small ring, no security level); "
                "pass allow_insecure=True to use it in tests"
            )
        for name, value in (
            ("max_contributors", max_contributors),
            ("max_key_holders", max_key_holders),
            ("max_decryptions", max_decryptions),
        ):
            if int(value) != value or value < 1:
                raise CryptoError(f"{name} must be a positive integer, got {value!r}")
        if statistical_security < OPENFHE_STATISTICAL_SECURITY:
            raise CryptoError(f"statistical_security must be at least "
                              f"{OPENFHE_STATISTICAL_SECURITY} bits, got {statistical_security}")
        meta = _Meta(profile, max_contributors, max_key_holders, max_decryptions, None,
                     statistical_security)
        if spec.flooding:
            measured, ring_dim = _estimate_noise(meta)
            meta = _Meta(profile, max_contributors, max_key_holders, max_decryptions, measured,
                         statistical_security)
            cc = _generate(_params(meta, fhe.EXEC_EVALUATION))
            if cc.GetRingDimension() != ring_dim:  # the estimate holds for its ring only
                raise CryptoError(
                    f"noise estimated in ring {ring_dim}, evaluation ring is "
                    f"{cc.GetRingDimension()}"
                )
        else:
            cc = _generate(_params(meta, None))
        return cls(meta, cc, fhe.Serialize(cc, fhe.BINARY))

    def to_bytes(self) -> bytes:
        """Profile metadata plus OpenFHE's BINARY context serialization."""
        meta = json.dumps(asdict(self._meta), sort_keys=True).encode()
        return _HEAD.pack(_MAGIC, _VERSION, len(meta)) + meta + self._cc_bytes

    @classmethod
    def from_bytes(cls, blob: bytes) -> CKKSContext:
        """Rebuild the context ``to_bytes`` wrote; it must rebuild byte for byte."""
        if len(blob) < _HEAD.size:
            raise CryptoError("context bytes are truncated")
        magic, version, size = _HEAD.unpack_from(blob)
        if magic != _MAGIC or version != _VERSION:
            raise CryptoError("not fedsim CKKS context bytes (bad magic or version)")
        try:
            fields = json.loads(blob[_HEAD.size : _HEAD.size + size])
            meta = _Meta(**fields)
        except (ValueError, TypeError) as exc:
            raise CryptoError(f"context metadata unreadable: {exc}") from exc
        spec = get_profile(meta.profile)
        stored = bytes(blob[_HEAD.size + size :])
        mode = fhe.EXEC_EVALUATION if spec.flooding else None
        cc = _generate(_params(meta, mode))
        if fhe.Serialize(cc, fhe.BINARY) != stored:
            raise CryptoError(
                "context bytes do not rebuild identically (tampered, or another OpenFHE build)"
            )
        return cls(meta, cc, stored)

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        # Pickles as bytes: OpenFHE objects themselves never pickle.
        return (CKKSContext.from_bytes, (self.to_bytes(),))

    def __repr__(self) -> str:
        return (
            f"CKKSContext(profile={self.profile!r}, ring_dimension={self._ring_dim}, "
            f"values_per_ciphertext={self.values_per_ciphertext}, "
            f"value_bound={self._value_bound:g}, error_bound={self._error_bound:.3g})"
        )

    def owns(self, obj: Any) -> bool:
        """True if an OpenFHE ciphertext or key was made in (or mapped to) this context."""
        owner = obj.GetCryptoContext()
        # pybind11 hands back the registered wrapper of the same C++ context: the identity
        # test is the fast path; equal serializations mean the same cached context.
        return owner is self._cc or fhe.Serialize(owner, fhe.BINARY) == self._cc_bytes

    @property
    def openfhe(self) -> Any:
        """The underlying OpenFHE ``CryptoContext`` (for fedsim.crypto; never pickle it)."""
        return self._cc

    @property
    def profile(self) -> str:
        return self._meta.profile

    @property
    def spec(self) -> Profile:
        """The registered `Profile` this context was built from."""
        return self._spec

    @property
    def complex_packing(self) -> bool:
        """True when each slot carries two reals (``fast``)."""
        return self._spec.complex_packing

    @property
    def flooding(self) -> bool:
        """True when decryption shares are noise-flooded (``secure``, ``test``)."""
        return self._spec.flooding

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def ring_dimension(self) -> int:
        return self._ring_dim

    @property
    def values_per_ciphertext(self) -> int:
        """Real values one ciphertext carries: slots, or twice that with COMPLEX packing."""
        return self._slots * (2 if self.complex_packing else 1)

    @property
    def value_bound(self) -> float:
        """Largest |value| of any slot of a decrypted sum that still decrypts correctly."""
        return self._value_bound

    @property
    def error_bound(self) -> float:
        """Max abs error per value of a decrypted sum, for up to ``max_key_holders``."""
        return self._error_bound

    @property
    def share_noise_sigma(self) -> float:
        """Std of the Gaussian noise OpenFHE adds to each partial decryption coefficient."""
        return self._share_sigma

    @property
    def max_contributors(self) -> int:
        return self._meta.max_contributors

    @property
    def max_key_holders(self) -> int:
        return self._meta.max_key_holders

    @property
    def max_decryptions(self) -> int:
        return self._meta.max_decryptions

    @property
    def measured_noise(self) -> float | None:
        """log2 std of the aggregate's noise, as measured when the context was made."""
        return self._meta.measured_noise

    @property
    def statistical_security(self) -> int:
        return self._meta.statistical_security

    @property
    def noise_estimate(self) -> float | None:
        """log2 of the high-probability bound of the aggregate's noise over every
        coefficient of every decryption: what the flooding is sized for."""
        if self._meta.measured_noise is None:
            return None
        return bound_bits(self._meta.measured_noise, self._ring_dim, self._meta.max_decryptions,
                          self._meta.statistical_security)

    def flooding_sigma_for(self, measured: float) -> float:
        """The share sigma this context's formula gives for a measured noise (log2 std)."""
        bound = bound_bits(measured, self._ring_dim, self._meta.max_decryptions,
                           self._meta.statistical_security)
        return flooding_sigma(bound, self._meta.max_decryptions,
                              self._meta.statistical_security)

    @property
    def fingerprint(self) -> str:
        """Short sha256 hex of ``to_bytes()``: equal contexts, equal fingerprints."""
        return hashlib.sha256(self.to_bytes()).hexdigest()[:16]
