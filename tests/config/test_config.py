from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedsim.config import RunConfig, apply_overrides, from_dict, load_config, replace
from fedsim.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def error_of(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    return str(info.value)


def test_shipped_configs_load_and_match_the_paper():
    quick = load_config(ROOT / "configs/quick.yaml")
    paper = load_config(ROOT / "configs/paper.yaml")
    assert isinstance(quick, RunConfig) and quick.federation.rounds == 20
    assert paper.model.depth == 20 and paper.model.width == 512
    assert paper.data.synth.vocab_size == 24428 and paper.data.synth.num_hospitals == 5
    assert paper.federation.clients_per_round == 3 and paper.federation.rounds == 200
    assert paper.train.optimizer == "adam" and paper.train.lr == 0.001
    assert paper.train.batch_size == 128 and paper.train.local_steps == 200


def test_configs_are_frozen():
    cfg = from_dict({})
    with pytest.raises(AttributeError):
        cfg.seed = 3  # type: ignore[misc]


def test_dotted_overrides_parse_yaml_values():
    cfg = load_config(ROOT / "configs/quick.yaml", ["federation.rounds=5", "train.lr=0.01",
                                                     "data.hospitals=[hospital-0, hospital-1]",
                                                     "federation.clients_per_round=2"])
    assert cfg.federation.rounds == 5 and cfg.train.lr == 0.01
    assert cfg.data.hospitals == ("hospital-0", "hospital-1")
    again = replace(cfg, ["seed=7"])
    assert again.seed == 7 and again.federation.rounds == 5


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"trian": {}}, "trian: unknown key (allowed: crypto, data, evaluation, federation"),
        ({"train": {"learning_rate": 1}}, "train.learning_rate: unknown key"),
        ({"train": {"lr": -0.1}}, "train.lr: must be > 0, got -0.1"),
        ({"train": {"lr": "fast"}}, "train.lr: expected a number, got the string 'fast'"),
        ({"federation": {"rounds": 2.5}}, "federation.rounds: expected an integer, got float 2.5"),
        ({"federation": {"rounds": True}}, "federation.rounds: expected an integer, got bool"),
        ({"federation": {"mode": "secure"}},
         "federation.mode: must be one of 'plaintext', 'he', got 'secure'"),
        ({"federation": {"clients_per_round": 6}},
         "federation.clients_per_round: 6 sampled clients but only 5 hospitals"),
        ({"federation": {"clients_per_round": 2, "min_clients": 3}},
         "federation.min_clients: 3 is more than federation.clients_per_round (2)"),
        ({"data": {"hospitals": []}}, "data.hospitals: the hospital list is empty"),
        ({"data": {"source": "file"}}, "data.path: required when data.source is 'file'"),
        ({"data": {"fractions": [0.5, 0.5, 0.5]}}, "data.fractions: train/val/test fractions"),
        ({"model": "big"}, "model: expected a mapping, got the string 'big'"),
        ({"crypto": {"threshold": 1}}, "crypto.threshold: must satisfy key_holders/2 < threshold"),
        ({"crypto": {"profile": "test"}}, "crypto.profile: 'test' is an insecure ring"),
        ({"train": {"local_steps": None}}, "train: set exactly one of train.local_steps"),
    ],
)
def test_bad_values_name_the_key(data, message):
    assert message in error_of(data)


def test_override_needs_key_and_value():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["federation.rounds"])
    with pytest.raises(ConfigError, match="federation.rounds is not a section"):
        apply_overrides({"federation": {"rounds": 3}}, ["federation.rounds.x=1"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["configs/quick.yaml", "train.lr=-1"], "train.lr: must be > 0, got -1.0"),
        (["configs/quick.yaml", "federation.clients_per_round=9"],
         "federation.clients_per_round: 9 sampled clients but only 5 hospitals"),
        (["configs/quick.yaml", "data.hospitals=[]"], "data.hospitals: the hospital list is empty"),
        (["configs/quick.yaml", "optimiser.lr=1"], "optimiser: unknown key"),
        (["configs/missing.yaml"], "config file not found: configs/missing.yaml"),
    ],
)
def test_cli_prints_one_line_and_exits_2(args, message, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "run", *args, "--out", str(tmp_path / "r")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fedsim: error: ") and message in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()
