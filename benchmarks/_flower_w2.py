"""W2 on Flower's simulation engine (run by `benchmarks.many_clients --peer flower`).

Runs in ``.venv-flower`` (flwr 1.30, its own ray 2.51.1); imports nothing from fedsim.
Same data, model and training function as fedsim (`benchmarks._w2`). Sampling: the
strategy sends round r's fit instructions to the clients fedsim samples in round r
(`_w2.sample_round`), one supernode per client, each told its client id in the fit
config. FedAvg weighted by sample count (Flower's own `FedAvg.aggregate_fit`). Writes one
JSON row to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time

T0 = time.perf_counter()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flwr.client import ClientApp, NumPyClient  # noqa: E402
from flwr.common import (  # noqa: E402
    Context,
    FitIns,
    ndarrays_to_parameters,
    parameters_to_ndarrays,  # noqa: E402
)
from flwr.server import ServerApp, ServerAppComponents, ServerConfig  # noqa: E402
from flwr.server.strategy import FedAvg  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

from benchmarks import _w2  # noqa: E402

TEMPLATE = _w2.init_params()
LEAVES, TREEDEF = jax.tree_util.tree_flatten(TEMPLATE)


def to_tree(arrays):
    return jax.tree_util.tree_unflatten(TREEDEF, [np.asarray(a, np.float32) for a in arrays])


def to_arrays(tree):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]


class W2Client(NumPyClient):
    def fit(self, parameters, config):
        x, y = _w2.client_data(int(config["cid"]))
        new = _w2.local_train_jit(to_tree(parameters), x, y)
        return to_arrays(new), len(x), {}


class SameSampling(FedAvg):
    """FedAvg whose clients are fedsim's sampled ones; records round times."""

    def __init__(self, *, clients: int, per_round: int, rounds: int, seed: int, **kw):
        super().__init__(fraction_fit=0.0, fraction_evaluate=0.0, min_fit_clients=per_round,
                         min_available_clients=clients, **kw)
        self.clients, self.per_round, self.rounds, self.seed = clients, per_round, rounds, seed
        self.starts: list[float] = []
        self.end = None
        self.final = None

    def configure_fit(self, server_round, parameters, client_manager):
        self.starts.append(time.perf_counter())
        client_manager.wait_for(self.clients, timeout=600)  # every supernode registered
        nodes = sorted(client_manager.all().items())  # stable node <-> client mapping
        chosen = _w2.sample_round(self.seed, server_round - 1, self.clients, self.per_round)
        return [(nodes[int(c)][1], FitIns(parameters, {"cid": int(c)})) for c in chosen]

    def aggregate_fit(self, server_round, results, failures):
        out = super().aggregate_fit(server_round, results, failures)
        if failures:
            raise RuntimeError(f"round {server_round}: {len(failures)} client failure(s)")
        if server_round == self.rounds:
            self.end = time.perf_counter()
            self.final = _w2.scores(to_tree(parameters_to_ndarrays(out[0])))
        return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--per-round", type=int, default=10)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-cpus", type=int)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    strategy = SameSampling(clients=args.clients, per_round=args.per_round, rounds=args.rounds,
                            seed=args.seed,
                            initial_parameters=ndarrays_to_parameters(to_arrays(TEMPLATE)))

    def server_fn(context: Context) -> ServerAppComponents:
        return ServerAppComponents(strategy=strategy,
                                   config=ServerConfig(num_rounds=args.rounds))

    def client_fn(context: Context):
        return W2Client().to_client()

    init_args = {"include_dashboard": False}
    if args.num_cpus:
        init_args["num_cpus"] = args.num_cpus
    run_simulation(server_app=ServerApp(server_fn=server_fn),
                   client_app=ClientApp(client_fn=client_fn),
                   num_supernodes=args.clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": init_args})
    total = time.perf_counter() - T0
    if strategy.final is None:
        raise SystemExit("Flower run did not finish its rounds")
    rounds = np.diff(strategy.starts + [strategy.end])
    row = {"framework": "flower", "mode": "plaintext", "backend": "flower-ray",
           "clients": args.clients, "per_round": args.per_round, "rounds": args.rounds,
           "cohorts": 0, "num_params": int(sum(a.size for a in LEAVES)), "total_s": total,
           "startup_s": strategy.starts[0] - T0, "rounds_s": float(rounds.sum()),
           "first_round_s": float(rounds[0]),
           "s_per_round": float(rounds[1:].mean()) if len(rounds) > 1 else float(rounds[0]),
           **strategy.final}
    with open(args.out, "w") as f:
        json.dump(row, f)


if __name__ == "__main__":
    main()
