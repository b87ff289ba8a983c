"""The README's "Extending fedsim" examples, run exactly as printed there."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from builders import federation, tiny_config, train_one

from fedsim.privacy import AccountingSpec, epsilon

ROOT = Path(__file__).resolve().parents[1]


def _examples() -> dict[str, str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Extending fedsim", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return {block.splitlines()[0].removeprefix("# "): block for block in blocks}


EXAMPLES = _examples()


def _run(path: str) -> None:
    """Import the example as the module its file would be (the registry's own folder)."""
    assert (ROOT / path).parent.is_dir()
    name = path.removesuffix(".py").replace("/", ".")
    module = types.ModuleType(name)
    module.__file__ = str(ROOT / path)
    sys.modules[name] = module
    exec(compile(EXAMPLES[path], path, "exec", dont_inherit=True), module.__dict__)


def test_the_readme_shows_exactly_the_three_examples():
    assert sorted(EXAMPLES) == ["fedsim/aggregate/optimizers/fedavg_clipped.py",
                                "fedsim/crypto/profiles/secure256.py",
                                "fedsim/privacy/mechanisms/gaussian_l1.py"]


def test_a_new_mechanism_clips_noises_and_accounts():
    _run("fedsim/privacy/mechanisms/gaussian_l1.py")
    cfg = tiny_config(privacy={"enabled": True, "mechanism": "gaussian_l1", "clip": 0.05,
                               "noise_multiplier": 2.0})
    fed = federation(cfg)
    before = fed.state.params.astype(np.float64)
    clean = 0.0
    for name in fed.names:  # every client samples every round here (3 of 3)
        _, payload = train_one(fed, name, 0)
        assert np.abs(payload[:-1] * 3).sum() <= 0.05 * (1 + 1e-9)  # L1-clipped
        clean = clean + payload[:-1]
    record = fed.run_round(0)
    noise = fed.state.params.astype(np.float64) - before - clean
    assert np.std(noise) == pytest.approx(0.05 * 2.0 / 3, rel=0.06)
    spec = AccountingSpec("gaussian", 2.0, 1e-5, sampling="fixed", population=3, sample_size=3)
    assert record.extra["epsilon_observer"] == pytest.approx(epsilon(spec, 1), rel=1e-9)


def test_a_new_server_optimizer_bounds_the_step():
    _run("fedsim/aggregate/optimizers/fedavg_clipped.py")
    plain = federation(tiny_config())
    clipped = federation(tiny_config(federation={
        "server_optimizer": {"name": "fedavg_clipped", "max_norm": 0.01}}))
    start = plain.state.params.copy()
    plain.run_round(0)
    clipped.run_round(0)
    step = plain.state.params - start
    norm = float(np.linalg.norm(step))
    assert norm > 0.01  # so the clip binds
    np.testing.assert_allclose(clipped.state.params - start, step * (0.01 / norm), atol=1e-7)


def test_a_new_crypto_profile_runs_an_encrypted_round():
    _run("fedsim/crypto/profiles/secure256.py")
    enc = federation(tiny_config(federation={"mode": "he"},
                                 crypto={"profile": "secure256", "allow_insecure": False}))
    plain = federation(tiny_config())
    assert enc.scheme.context.ring_dimension == 8192 and enc.scheme.context.flooding
    enc.run_round(0)
    plain.run_round(0)
    assert np.max(np.abs(enc.state.params - plain.state.params)) <= 1e-4
