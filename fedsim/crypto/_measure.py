"""Throwaway throughput check: ``OMP_NUM_THREADS=1 python -m fedsim.crypto._measure``.

One process, 3 clients, 3 key holders, 2,000,000 float32-like values ~ N(0, 0.01),
scaled into the context's value bound. Prints values per second per step, bytes per
value and the max abs error of the decrypted sum. Not a test; numbers vary by machine.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from fedsim.crypto import CKKSContext, Encryptor, KeyShareHolder, ObjectSum, Packer, fuse_timed


def measure(profile: str, num_values: int = 2_000_000, clients: int = 3) -> dict[str, float]:
    ctx = CKKSContext.create(profile)
    blob = ctx.to_bytes()
    holders = [KeyShareHolder(blob, i, 3) for i in range(3)]
    key = None
    for holder in holders:
        key = holder.keygen(key)
    packer = Packer(num_values, ctx.values_per_ciphertext)
    rng = np.random.default_rng(0)
    scale = min(ctx.value_bound, 1.0) / (clients * 0.06)  # 6 sigma of N(0, 0.01) fits
    vectors = [rng.normal(0, 0.01, num_values).astype(np.float32) * scale for _ in range(clients)]
    encryptor = Encryptor(ctx, key)
    total = ObjectSum(ctx, public_key=key)
    t_enc, t_add, steps = 0.0, 0.0, {"encode": 0.0, "encrypt": 0.0, "serialize": 0.0}
    for i, vector in enumerate(vectors):
        t0 = time.perf_counter()
        batch, timings = encryptor.encrypt_timed(packer.pack(vector, 0.1))
        t1 = time.perf_counter()
        total.add(batch, contributor=f"c{i}")
        t_enc, t_add = t_enc + t1 - t0, t_add + time.perf_counter() - t1
        steps = {k: steps[k] + timings[k] for k in steps}
    aggregate = total.result()
    t0 = time.perf_counter()
    parts = [h.partial_decrypt(aggregate, lead=i == 0) for i, h in enumerate(holders)]
    t_dec = (time.perf_counter() - t0) / len(holders)
    t0 = time.perf_counter()
    values, fuse_steps = fuse_timed(ctx, parts)
    t_fuse = time.perf_counter() - t0
    result, _ = packer.unpack(values)
    exact = np.sum([v.astype(np.float64) for v in vectors], axis=0)
    mv = num_values / 1e6
    return {
        "encrypt Mv/s": clients * mv / t_enc,
        "  encode/encrypt/serialize s": tuple(round(steps[k] / clients, 3) for k in steps),
        "add Mv/s": clients * mv / t_add,
        "partial decrypt Mv/s/holder": mv / t_dec,
        "fuse Mv/s": mv / t_fuse,
        "  deserialize/fusion/decode s": tuple(round(v, 3) for v in fuse_steps.values()),
        "bytes/value": len(aggregate) / num_values,
        "max abs error": float(np.abs(result - exact).max()),
        "error_bound": ctx.error_bound,
        "max |sum|": float(np.abs(exact).max()),
        "value_bound": ctx.value_bound,
    }


if __name__ == "__main__":
    for name in sys.argv[1:] or ["secure", "fast"]:
        print(name)
        for label, number in measure(name).items():
            print(f"  {label:32s} {number if isinstance(number, tuple) else f'{number:.4g}'}")
