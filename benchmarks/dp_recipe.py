"""The DP-recipe search harness: quick.yaml's FedAvg (3 of 5 hospitals a round) without
Ray, with no DP, dense DP-SGD or sparse DP-SGD in each hospital, for searching record-level
DP settings fast (about 20 s a run here, against 40 s to 4 min through `fedsim run`).

It uses fedsim's own trainers, row selection and calibration; the round loop is the
plain FedAvg of quick.yaml (fixed sampling of 3 of 5 from the run seed, weights by
training rows, server rate 1), not `fedsim.protocol.loop`, and nothing is encrypted.
``--oracle K`` replaces the private selection by the K codes most frequent in each
hospital's training rows, counted without noise: NOT private, an upper bound on what a
better selection could buy. Prints one JSON line: the settings, the pooled test AUC, the
seconds, and each hospital's multiplier, rate and selected rows.

    python -m benchmarks.dp_recipe --mode sparse --eps 1 --lr 0.3 --set model.width=4
"""
import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jax.flatten_util import ravel_pytree
from sklearn.metrics import roc_auc_score

from fedsim.config.files import load_config
from fedsim.learning.model import build_model, init_params
from fedsim.learning.sparse import SparseDPSGDTrainer
from fedsim.learning.train import DPSGDTrainer, LocalTrainer, predict
from fedsim.privacy.accountant import calibrate_dpsgd_noise_multiplier
from fedsim.privacy.events import RecordLevelSpec
from fedsim.privacy.randomness import SecretRandom
from fedsim.privacy.sparse import RowSelection, code_counts
from fedsim.run.runner import load_dataset
from fedsim.seeding import client_key, stream

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quick.yaml"


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.dp_recipe",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--eps", type=float, default=None, help="target epsilon (delta 1e-5)")
    ap.add_argument("--mode", default="dense", choices=("none", "dense", "sparse"))
    ap.add_argument("--batch", type=float, default=64, help="expected Poisson batch")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--zs", type=float, default=20.0, help="selection multiplier")
    ap.add_argument("--k", type=int, default=8, help="selection max_codes")
    ap.add_argument("--thr", type=float, default=None, help="selection threshold")
    ap.add_argument("--optimizer", default="sgd")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--oracle", type=int, default=0, help="NOT private: top-K codes")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides KEY=VALUE")
    return ap.parse_args(argv)


def _trainer(a, cfg, model, client, vocab_size):
    n = len(client.train)
    if a.mode == "none":
        return LocalTrainer(model, cfg.train), {}
    q = min(1.0, a.batch / n)
    sel = RowSelection(a.zs, a.k, a.thr) if a.mode == "sparse" else None
    zs = sel.noise_multiplier if sel else None
    z = calibrate_dpsgd_noise_multiplier(a.eps, 1e-5, a.rounds, sampling_rate=q,
                                         steps_per_round=a.steps,
                                         selection_noise_multiplier=zs)
    spec = RecordLevelSpec(z, q, a.steps, 1e-5, selection_noise_multiplier=zs)
    if sel is None:
        return DPSGDTrainer(model, cfg.train, a.clip, spec, n), {"z": z, "q": q}
    chosen = sel.select(client.train.codes, vocab_size, SecretRandom())
    if a.oracle:
        counts = code_counts(client.train.codes, vocab_size, 10**6)
        chosen = np.sort(np.argsort(-counts, kind="stable")[:a.oracle])
    info = {"z": z, "q": q, "selected": int(chosen.size), "thr": sel.cut(vocab_size)}
    return SparseDPSGDTrainer(model, cfg.train, clip=a.clip, spec=spec, num_examples=n,
                              selected=chosen), info


def main(argv: Sequence[str] | None = None) -> int:
    a = _arguments(argv)
    cfg = load_config(CONFIG, [f"train.lr={a.lr}", f"train.optimizer={a.optimizer}",
                               f"seed={a.seed}", *a.set])
    ds = load_dataset(cfg)
    model = build_model(cfg.model, vocab_size=ds.vocab_size, num_numeric=ds.num_numeric)
    params = init_params(model, key=client_key(cfg.seed, 0), max_codes=ds.max_codes)
    flat, unravel = ravel_pytree(params)
    t0 = time.time()
    trainers, info = [], {}
    for c in ds.clients:
        trainer, about = _trainer(a, cfg, model, c, ds.vocab_size)
        trainers.append(trainer)
        if about:
            info[c.name] = about
    state = np.asarray(flat, np.float64)
    sizes = np.array([len(c.train) for c in ds.clients], float)
    for r in range(a.rounds):
        pick = stream(cfg.seed, "sampling", r).choice(len(ds.clients), 3, replace=False)
        deltas, weights = [], []
        for i in pick:
            c = ds.clients[i]
            inputs = trainers[i].inputs(stream(cfg.seed, "batches", r, int(i)), c.train,
                                        a.steps, seed=cfg.seed, round_idx=r, index=int(i),
                                        secret=SecretRandom())
            new, _ = trainers[i].train(unravel(state.astype(np.float32)), inputs)
            deltas.append(np.asarray(ravel_pytree(new)[0], np.float64) - state)
            weights.append(sizes[i])
        w = np.array(weights) / np.sum(weights)
        state = state + sum(d * x for d, x in zip(deltas, w, strict=True))
    test = ds.pooled("test")
    auc = roc_auc_score(test.labels, predict(model, unravel(state.astype(np.float32)), test))
    print(json.dumps({"args": vars(a), "auc": round(float(auc), 4),
                      "secs": round(time.time() - t0, 1), "info": info}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
