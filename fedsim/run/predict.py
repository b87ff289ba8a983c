"""``fedsim predict RUN --query FILE --out SCORES.parquet``: the ensemble score of every
query row from the hospitals of a finished run, under encryption
(`fedsim.protocol.prediction`).

The run's config says who the hospitals are and which feature columns the query needs;
the launcher, standing in for each hospital's data steward, starts every hospital's party
with its own rows (as ``fedsim run`` does); the coordinator holds none of them and sees
only the opened ensemble. The scores are written atomically as Parquet: ``row`` (the
query's row number) and ``score``, with the run id, the hospitals, the model (global or
fine-tuned) and the precision bound in the file's metadata.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.errors import ConfigError, DataError


def _columns(cfg: Any) -> Any:
    from fedsim.data import SynthSpec
    from fedsim.data.loader import synthetic_columns

    if cfg.data.source == "synthetic":
        return synthetic_columns(SynthSpec(**asdict(cfg.data.synth), seed=cfg.seed))
    if cfg.data.source == "teacher":
        raise ConfigError("fedsim predict: the run's data is the teacher benchmark, which "
                          "has no feature table a query could follow")
    return cfg.data.columns


def predict_run(run_dir: str | Path, query_path: str | Path, out: str | Path, *,
                backend: str = "ray", address: str | None = None, fine_tune: bool = False,
                overwrite: bool = False, console: Any = None) -> Any:
    """Score the query with the run's hospitals; returns the `Prediction`."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from jax.flatten_util import ravel_pytree

    from fedsim.data import load_table
    from fedsim.data.loader import query_rows
    from fedsim.protocol.prediction import QueryRows, predict_ensemble
    from fedsim.run.datasets import load_dataset, run_folds, run_scale
    from fedsim.run.results import atomic_write, load_run
    from fedsim.run.runner import make_backend

    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it")
    if out.suffix.lower() != ".parquet":
        raise ConfigError(f"--out {out}: scores are written as Parquet (a .parquet path)")
    run = load_run(run_dir)
    if run.manifest.get("status") != "completed" or run.params is None:
        raise DataError(f"{run_dir}: not a completed run with final parameters "
                        f"(status {run.manifest.get('status')!r})")
    cfg = run.config
    dataset = run_scale(cfg, load_dataset(cfg), run_dir)  # on the run's scale
    folds = run_folds(cfg, run_dir)  # rare categories folded as the run did
    codes, numeric = query_rows(load_table(query_path), _columns(cfg),
                                vocab_size=dataset.vocab_size,
                                num_numeric=dataset.num_numeric if folds is None
                                else folds.shape[0])
    if folds is not None:
        numeric = numeric @ folds
    query = QueryRows(codes, numeric)
    flat, _ = ravel_pytree(run.params)
    started_ray = False
    if backend == "ray":
        from actors import connect

        started_ray = connect(address)
    run_id = f"{run.manifest.get('run_id', 'run')}-predict-{time.strftime('%H%M%S')}"
    parties = make_backend(backend, run_id, cfg)
    try:
        result = predict_ensemble(cfg, dataset, np.asarray(flat), query, backend=parties,
                                  run_id=run_id, fine_tune=fine_tune)
    finally:
        parties.shutdown()
        if started_ray:
            import ray

            ray.shutdown()
    meta = {"run_id": str(run.manifest.get("run_id")), "query": str(query_path),
            "model": "fine-tuned per hospital" if fine_tune else "global",
            "hospitals": list(result.hospitals), "error_bound": result.error_bound,
            "seconds": result.seconds}
    table = pa.table({"row": np.arange(len(query), dtype=np.int64),
                      "score": result.scores}).replace_schema_metadata(
        {"fedsim": json.dumps(meta)})
    atomic_write(out, lambda p: pq.write_table(table, p))
    if console is not None:
        console.print(f"fedsim predict: {len(query)} rows scored by {len(result.hospitals)} "
                      f"hospitals ({meta['model']} model), ensemble within "
                      f"{result.error_bound:.1e} of their mean; wrote {out}", highlight=False)
    return result
