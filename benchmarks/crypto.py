"""W3: crypto pipeline throughput, fedsim's code against a bare loop of the same OpenFHE calls.

Every step takes the same input and yields the same output in both paths (bytes in,
bytes out, or floats in, bytes out), so the ratio fedsim/bare is what fedsim's own
plumbing costs: batch framing and CRCs, range and context checks, timing. Both paths
use the very same CKKS context (same parameters); the bare path has its own 3 keys made
with the same chained ``KeyGen``/``MultipartyKeyGen``. fedsim and bare calls alternate
per client and per key holder so that drift of a shared machine hits both alike.

Steps (values per second):
- ``encrypt``: pack + encode + encrypt (``Packer.pack`` + ``Encryptor.encrypt_timed``'s
  encode and encrypt time; bare: reshape, ``MakeCKKSPackedPlaintext``, ``Encrypt``).
- ``serialize``: ciphertexts to one batch of bytes (bare: ``Serialize`` per ciphertext).
- ``deserialize``: bytes to checked ciphertexts (``load_ciphertexts``; bare:
  ``DeserializeCiphertextString``).
- ``add``: a client's bytes into the running sum (``ByteSum.add`` as the aggregator
  runs it: residues added in the serialized bytes with every check, see
  ``fedsim.crypto.raw``; bare: deserialize + ``EvalAddInPlace``).
- ``partial_decrypt``: aggregate bytes to share bytes, per key holder
  (``KeyShareHolder.partial_decrypt``; bare: deserialize, ``MultipartyDecryptLead/Main``,
  ``Serialize``).
- ``fuse``: share bytes to decoded values (``fuse_bytes_timed`` with the share layout
  the coordinator learns once per run, + ``Packer.unpack``; bare: deserialize,
  ``MultipartyDecryptFusion``, decode).
"""

from __future__ import annotations

from benchmarks._common import single_thread_env

single_thread_env()

import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks import _common as common  # noqa: E402

STEPS = ("encrypt", "serialize", "deserialize", "add", "partial_decrypt", "fuse")


def _bare_encrypt(cc, key, vector: np.ndarray, per_ct: int, complex_packing: bool):
    t0 = time.perf_counter()
    rows = np.zeros(-(-(vector.size + 1) // per_ct) * per_ct, np.float64)
    rows[: vector.size] = vector
    rows = rows.reshape(-1, per_ct)
    if complex_packing:
        rows = rows.view(np.complex128)
    enc = time.perf_counter() - t0
    ser = 0.0
    payloads = []
    for row in rows:
        t0 = time.perf_counter()
        ct = cc.Encrypt(key, cc.MakeCKKSPackedPlaintext(row))
        t1 = time.perf_counter()
        payloads.append(fhe.Serialize(ct, fhe.BINARY))
        enc, ser = enc + t1 - t0, ser + time.perf_counter() - t1
    return payloads, enc, ser


def _bare_deserialize(payloads: Sequence[bytes]) -> list:
    return [fhe.DeserializeCiphertextString(p, fhe.BINARY) for p in payloads]


def measure_profile(profile: str, num_values: int, clients: int, holders: int,
                    seed: int = 0) -> tuple[list[dict], dict]:
    """One profile: rows (one per step and path) and a summary dict."""
    from fedsim.crypto import (
        ByteSum,
        CKKSContext,
        Encryptor,
        KeyShareHolder,
        Packer,
        fuse_bytes_timed,
        summation_for,
    )
    from fedsim.crypto.cipher import load_ciphertexts
    from fedsim.crypto.fusion import learn_share_layout

    ctx = CKKSContext.create(profile, max_contributors=clients, max_key_holders=holders)
    cc = ctx.openfhe
    blob = ctx.to_bytes()
    parties = [KeyShareHolder(blob, i, holders) for i in range(holders)]
    key = None
    for party in parties:
        key = party.keygen(key)
    # Bare keys: the same chained key generation, straight through OpenFHE.
    bare_keys = [cc.KeyGen()]
    for _ in range(holders - 1):
        bare_keys.append(cc.MultipartyKeyGen(bare_keys[-1].publicKey))
    bare_pk = bare_keys[-1].publicKey

    rng = np.random.default_rng(seed)
    vectors = [rng.normal(0, 0.01, num_values).astype(np.float32) for _ in range(clients)]
    # Public scale: 6 sigma of the sum of all clients fits the context's value bound.
    scale = 0.9 * ctx.value_bound / (6 * 0.01 * clients)
    packer = Packer(num_values, ctx.values_per_ciphertext)
    per_ct = ctx.values_per_ciphertext
    encryptor = Encryptor(ctx, key)
    total = summation_for(ctx, key)()  # the aggregator's sum: in the bytes when it can
    if not isinstance(total, ByteSum):
        raise RuntimeError("the byte-level sum is unavailable with this OpenFHE build")
    # Seconds per client (per key holder for partial decryption), one list per step and
    # path; throughput comes from the median, which a busy shared machine disturbs least.
    secs: dict[tuple[str, str], list[float]] = {(s, p): [] for s in STEPS
                                                for p in ("fedsim", "bare")}
    bare_sum = None
    batch_bytes = 0
    batches = []
    for i, vector in enumerate(vectors):
        scaled = vector.astype(np.float64) * scale
        for path in (("fedsim", "bare") if i % 2 == 0 else ("bare", "fedsim")):
            if path == "fedsim":
                t0 = time.perf_counter()
                packed = packer.pack(scaled, 0.0)
                pack_s = time.perf_counter() - t0
                batch, times = encryptor.encrypt_timed(packed)
                secs["encrypt", path].append(pack_s + times["encode"] + times["encrypt"])
                secs["serialize", path].append(times["serialize"])
                t0 = time.perf_counter()
                load_ciphertexts(ctx, batch, kind="ciphertext")
                secs["deserialize", path].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                total.add(batch, contributor=f"c{i}")
                secs["add", path].append(time.perf_counter() - t0)
                batch_bytes = len(batch)
                batches.append(batch)
            else:
                payloads, enc_s, ser_s = _bare_encrypt(cc, bare_pk, scaled, per_ct,
                                                       ctx.complex_packing)
                secs["encrypt", path].append(enc_s)
                secs["serialize", path].append(ser_s)
                t0 = time.perf_counter()
                _bare_deserialize(payloads)
                secs["deserialize", path].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                cts = _bare_deserialize(payloads)
                if bare_sum is None:
                    bare_sum = cts
                else:
                    for acc, ct in zip(bare_sum, cts):
                        cc.EvalAddInPlace(acc, ct)
                secs["add", path].append(time.perf_counter() - t0)

    aggregate = total.result()
    verify_s = _verification(ctx, key, batches, aggregate, holders, num_values)
    bare_aggregate = [fhe.Serialize(ct, fhe.BINARY) for ct in bare_sum]
    shares, bare_shares = [], []
    for i, party in enumerate(parties):
        lead = i == 0
        for path in (("fedsim", "bare") if i % 2 == 0 else ("bare", "fedsim")):
            t0 = time.perf_counter()
            if path == "fedsim":
                shares.append(party.partial_decrypt(aggregate, lead=lead))
            else:
                cts = _bare_deserialize(bare_aggregate)
                sk = bare_keys[i].secretKey
                parts = cc.MultipartyDecryptLead(cts, sk) if lead else \
                    cc.MultipartyDecryptMain(cts, sk)
                bare_shares.append([fhe.Serialize(s, fhe.BINARY) for s in parts])
            secs["partial_decrypt", path].append(time.perf_counter() - t0)

    share_layout = learn_share_layout(ctx, shares)  # once per run, as the coordinator does
    for _ in range(3):  # fusion is fast: repeat it for a steadier median
        t0 = time.perf_counter()
        fused, _ = fuse_bytes_timed(ctx, shares, share_layout)
        fedsim_sum, _ = packer.unpack(fused)
        secs["fuse", "fedsim"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        loaded = [_bare_deserialize(s) for s in bare_shares]
        bare_out = np.empty((len(bare_sum), per_ct))
        for j, parts in enumerate(zip(*loaded)):
            plain = cc.MultipartyDecryptFusion(list(parts))
            plain.SetLength(ctx.slots)
            bare_out[j] = plain.GetCKKSPackedValueArray().view(np.float64) \
                if ctx.complex_packing else plain.GetRealPackedValueArray()
        bare_vec = bare_out.reshape(-1)[:num_values]
        secs["fuse", "bare"].append(time.perf_counter() - t0)

    exact = np.sum([v.astype(np.float64) for v in vectors], axis=0)
    errors = {"fedsim": float(np.abs(fedsim_sum / scale - exact).max()),
              "bare": float(np.abs(bare_vec / scale - exact).max())}
    # How many values each step processed in total (per holder for partial decryption).
    rows = []
    for step in STEPS:
        for path in ("fedsim", "bare"):
            s = float(np.median(secs[step, path]))
            rows.append({"profile": profile, "step": step, "path": path,
                         "values": num_values, "seconds": s, "repeats": len(secs[step, path]),
                         "values_per_s": num_values / s,
                         "bytes_per_value": batch_bytes / num_values,
                         "max_abs_error": errors[path], "error_bound": ctx.error_bound / scale,
                         "ring_dim": ctx.ring_dimension, "clients": clients,
                         "key_holders": holders, "flooding": ctx.flooding})
    for row in rows:
        other = next(r for r in rows if r["step"] == row["step"] and r["path"] == "bare")
        row["fedsim_over_bare"] = (row["values_per_s"] / other["values_per_s"]
                                   if row["path"] == "fedsim" else 1.0)
    by = {r["step"]: r["fedsim_over_bare"] for r in rows if r["path"] == "fedsim"}
    # "decrypt" headline: partial decryption, the dominant decryption step.
    decrypt_s = next(r["seconds"] for r in rows if r["step"] == "partial_decrypt"
                     and r["path"] == "fedsim")
    summary = {"profile": profile, "encrypt": by["encrypt"], "decrypt": by["partial_decrypt"],
               "fuse": by["fuse"], "errors": errors, "bytes_per_value": batch_bytes / num_values,
               "verify_s": verify_s, "partial_decrypt_s": decrypt_s,
               "verify_over_decrypt": verify_s / decrypt_s,
               "label": profile if ctx.flooding else f"{profile} (no flooding: not provably "
                                                    "secure)"}
    return rows, summary


def _verification(ctx, key, batches, aggregate, holders, num_values) -> float:
    """Median seconds one key holder spends in `KeyHolder.check` on a round of these
    batches: every client's batch signature and endorsement verified, the batches
    re-added in their bytes, the result compared with the aggregator's sum (its policy
    checks come on top). Real `KeyHolder`s, registered as a run would register them."""
    from fedsim.crypto.identity import SigningKey, digest, endorsement, statement, sum_digest
    from fedsim.protocol.keyholder import DecryptionRequest, KeyHolder
    from fedsim.protocol.manifest import Manifest
    from fedsim.protocol.manifest import digest as manifest_digest
    from fedsim.protocol.policy import HolderPolicy
    from fedsim.protocol.schemes import Bundle

    names = tuple(f"c{i}" for i in range(len(batches)))
    policy = HolderPolicy(run_id="w3", profile=ctx.profile, allow_insecure=ctx.spec.insecure,
                          accept_unflooded=True, statistical_security=ctx.statistical_security,
                          num_holders=holders, threshold=None, min_clients=1,
                          max_contributors=len(batches), rounds=1, num_values=num_values,
                          noise_batches=0)
    blob = ctx.to_bytes()
    parties = [KeyHolder(policy, blob, index=i) for i in range(holders)]
    keys = {name: SigningKey() for name in names}
    cards = {p.index: p.card() for p in parties}
    for party in parties:
        party.register({n: k.public for n, k in keys.items()}, cards, SigningKey().public)
        party.use_public_key(key)
    model = digest(b"w3 model")
    bundle = Bundle(tuple((n,) for n in names), tuple(batches), tuple(
        keys[n].sign(statement("w3", 0, n, digest(b), model, b""))
        for n, b in zip(names, batches)), model)
    summed = sum_digest({n: digest(b).hex() for n, b in zip(names, batches)})
    endorsed = {n: keys[n].sign(endorsement("w3", 0, n, summed, b"")) for n in names}
    request = DecryptionRequest(Manifest("w3", 0, names, (), manifest_digest(aggregate)),
                                tuple(range(holders)), lead=False, endorsements=endorsed)
    seconds = []
    for party in parties:
        t0 = time.perf_counter()
        party.check(request, None, (bundle,))
        seconds.append(time.perf_counter() - t0)
    return float(np.median(seconds))


def _plot(rows: list[dict], path) -> None:
    plt = common.pyplot()
    profiles = sorted({r["profile"] for r in rows}, key=lambda p: p != "secure")
    fig, axes = plt.subplots(1, len(profiles), figsize=(6 * len(profiles), 4), squeeze=False)
    for ax, profile in zip(axes[0], profiles):
        x = np.arange(len(STEPS))
        for k, which in enumerate(("fedsim", "bare")):
            v = [next(r["values_per_s"] for r in rows if r["profile"] == profile and
                      r["step"] == s and r["path"] == which) / 1e6 for s in STEPS]
            ax.bar(x + (k - 0.5) * 0.38, v, 0.38, label=which)
        ax.set_xticks(x, STEPS, rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("million values / s (one core)")
        ax.set_title(f"CKKS {profile}: fedsim vs bare OpenFHE loop")
        ax.legend()
    fig.tight_layout()
    common.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    p = common.parser("crypto", __doc__)
    p.add_argument("--values", type=int, help="values per client (default 2,000,000)")
    p.add_argument("--clients", type=int, help="clients (default 10)")
    p.add_argument("--key-holders", type=int, default=3)
    p.add_argument("--profiles", default="secure,fast")
    args = p.parse_args(argv)
    out = common.out_dir(args, "crypto")
    n = args.values or (100_000 if args.quick else 2_000_000)
    clients = args.clients or (3 if args.quick else 10)
    profiles = [s.strip() for s in args.profiles.split(",") if s.strip()]

    rows, summaries = [], []
    for profile in profiles:
        r, s = measure_profile(profile, n, clients, args.key_holders)
        rows += r
        summaries.append(s)
    common.write_table(out / "crypto.parquet", rows)
    _plot(rows, out / "crypto.png")
    table = [{**{k: r[k] for k in ("profile", "step", "path", "seconds")},
              "Mvalues_per_s": r["values_per_s"] / 1e6, "fedsim/bare": r["fedsim_over_bare"]}
             for r in rows]
    err_rows = [{"profile": s["label"], "bytes/value": s["bytes_per_value"],
                 "max abs error fedsim": s["errors"]["fedsim"],
                 "max abs error bare": s["errors"]["bare"]} for s in summaries]
    check_rows = [{"profile": s["label"], "verify s per holder": s["verify_s"],
                   "partial decrypt s per holder": s["partial_decrypt_s"],
                   "verify / partial decrypt": s["verify_over_decrypt"]} for s in summaries]
    md = "\n".join([
        "# crypto (W3): CKKS pipeline throughput, fedsim vs bare OpenFHE",
        "",
        f"- settings: {n:,} float32 values ~ N(0, 0.01) per client, {clients} clients, "
        f"{args.key_holders} key holders, one process, OMP_NUM_THREADS=1"
        + (" (--quick)" if args.quick else ""),
        f"- command: `python -m benchmarks.crypto{' --quick' if args.quick else ''}`",
        *common.machine_lines(),
        "- values/s: values of one client's vector (or of the aggregate) over the median "
        "seconds per client (encrypt, serialize, deserialize, add), per key holder "
        "(partial_decrypt) or per repeat (fuse, 3 repeats); fedsim and bare calls alternate. "
        "See the module docstring for what each step includes in each path.",
        "",
        common.md_table(table, ["profile", "step", "path", "seconds", "Mvalues_per_s",
                                "fedsim/bare"],
                        {"seconds": ".3f", "Mvalues_per_s": ".2f", "fedsim/bare": ".2f"}),
        "",
        "Error of the decrypted sum against a float64 sum of the float32 inputs:",
        "",
        common.md_table(err_rows, list(err_rows[0]),
                        {"bytes/value": ".1f", "max abs error fedsim": ".2e",
                         "max abs error bare": ".2e"}),
        "",
        f"What each key holder checks before it decrypts ({clients} signed client batches: "
        "BLAKE3 and Ed25519 per batch, the batches re-added in their bytes, the sum "
        "compared with the aggregator's), against its partial decryption of the sum:",
        "",
        common.md_table(check_rows, list(check_rows[0]),
                        {"verify s per holder": ".3f", "partial decrypt s per holder": ".3f",
                         "verify / partial decrypt": ".2f"}),
        "",
        "![throughput](crypto.png)",
        "",
    ])
    common.write_text(out / "crypto.md", md)
    for s in summaries:
        print(f"crypto {s['label']}: fedsim/bare encrypt = {s['encrypt']:.2f}  "
              f"decrypt = {s['decrypt']:.2f}  fuse = {s['fuse']:.2f}  "
              f"max error {s['errors']['fedsim']:.1e}  holder checks "
              f"{s['verify_over_decrypt']:.2f} of its decryption")
    head = summaries[0]
    print(f"crypto {head['profile']}: fedsim/bare encrypt = {head['encrypt']:.2f}  "
          f"decrypt = {head['decrypt']:.2f}")
    return 0


import openfhe as fhe  # noqa: E402  (after single_thread_env, which OpenMP reads)

if __name__ == "__main__":
    raise SystemExit(main())
