"""``fedsim verify RUN [--params FILE]``: is this the model the federation produced?
(the seed paper's step 10, deployment).

A run with federated evaluation ends with every registered hospital signing its
evaluation batch of the final model, bound to that model's digest, and every key holder
opening that sum only after checking that all of them name the same model. Each holder
then signs (run, round, that digest) (`fedsim.protocol.keyholder.KeyHolder.receipt`);
the signatures and the holders' set-up identities are in ``metrics.json`` under
``deployment``. ``verify`` recomputes the digest of the parameters it is given
(``params.npz`` by default, or a hospital's own copy) and checks at least
``crypto.threshold`` (n-of-n: every) holders' signatures of it.

What a pass means: every hospital was given, and scored, exactly this model after the
last round, and the key holders attest to it: the file was not swapped or altered since.
What it does not mean: that the model is the correct server update of the decrypted
sums (the coordinator applies it, as in training), nor anything if the holders'
identities recorded at set-up are not the ones the consortium agreed (the trust
anchor, as a consortium's PKI would be).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedsim.errors import DataError, FedSimError


class VerificationFailed(FedSimError):
    """The parameters are not the model the key holders attested (or too few did)."""


def verify_run(run_dir: str | Path, params: str | Path | None = None) -> str:
    """One line saying what was verified; raises `VerificationFailed` or `DataError`."""
    from jax.flatten_util import ravel_pytree

    from fedsim.crypto.identity import deployment_statement, digest, model_digest, verify
    from fedsim.run.results import unflatten_params

    run_dir = Path(run_dir)
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{run_dir}: no readable metrics.json ({err})") from None
    block = metrics.get("deployment")
    if not block:
        raise DataError(f"{run_dir}: no key holders' receipt of the final model (only an he "
                        "run with federated evaluation that completed has one)")
    path = Path(params) if params is not None else run_dir / "params.npz"
    try:
        with np.load(path) as loaded:
            tree = unflatten_params({k: loaded[k] for k in loaded.files})
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a parameter file ({err})") from None
    flat, _ = ravel_pytree(tree)
    ours = digest(model_digest(np.asarray(flat, np.float32), {}) + block["plan"].encode())
    said = deployment_statement(block["run_id"], int(block["round"]), ours)
    good = sorted(int(i) for i, h in block["holders"].items()
                  if verify(bytes.fromhex(h["identity"]), bytes.fromhex(h["signature"]), said))
    if ours.hex() != block["model"] or len(good) < int(block["needed"]):
        raise VerificationFailed(
            f"{path} is not the model the key holders attested for run {block['run_id']} "
            f"({len(good)} of the {block['needed']} signatures needed match it)")
    return (f"{path}: the model every hospital evaluated after round {int(block['round']) + 1}"
            f" of run {block['run_id']}, attested by key holders "
            f"{', '.join(map(str, good))}")
