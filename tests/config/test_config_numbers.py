"""Numbers as users type them: YAML 1.1 reads 1e-5 as a string; fedsim does not."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedsim import load_config
from fedsim.errors import ConfigError

QUICK = Path(__file__).resolve().parents[2] / "configs/quick.yaml"


@pytest.mark.parametrize(("override", "read", "value"), [
    ("privacy.delta=1e-5", lambda c: c.privacy.delta, 1e-5),
    ("privacy.delta=1E-5", lambda c: c.privacy.delta, 1e-5),
    ("privacy.delta=.5", lambda c: c.privacy.delta, 0.5),
    ("train.lr=5e-3", lambda c: c.train.lr, 5e-3),
    ("train.lr=+2.", lambda c: c.train.lr, 2.0),
    ("crypto.update_bound=1e1", lambda c: c.crypto.update_bound, 10.0),
])
def test_overrides_accept_numbers_as_typed(override, read, value):
    assert read(load_config(QUICK, [override])) == value


def test_a_yaml_file_with_exponent_floats_loads(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(QUICK.read_text() + "\n")
    base = yaml.safe_load(path.read_text())
    base.setdefault("privacy", {})["delta"] = "1e-5"  # as YAML 1.1 would read 1e-5
    base["train"]["lr"] = "5E-3"
    base["federation"]["server_optimizer"] = {"name": "fedadam", "learning_rate": "1e-2"}
    path.write_text(yaml.safe_dump(base))
    cfg = load_config(path)
    assert (cfg.privacy.delta, cfg.train.lr) == (1e-5, 5e-3)
    assert dict(cfg.federation.server_optimizer.options)["learning_rate"] == 0.01


def test_words_are_still_refused_by_name():
    with pytest.raises(ConfigError, match="train.lr: expected a number, got the string 'fast'"):
        load_config(QUICK, ["train.lr=fast"])
