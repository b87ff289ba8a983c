"""The shape of the code: no string dispatch, a package per concept, small files, a
public API that resolves, and parties that never train never load JAX."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import fedsim

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fedsim"
# Names a config chooses among: only the config sections and the registries compare them.
DISPATCH = re.compile(r"[=!]=\s*[\"'](gaussian|laplace|aggregator|distributed|record|client|"
                      r"he|plaintext|secure|fast|test|hospital|cohort|fedavg|fedadam)[\"']")


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_string_dispatch_outside_the_config():
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
             for p in _sources() if "config" not in p.relative_to(PACKAGE).parts
             for i, line in enumerate(p.read_text().splitlines(), 1) if DISPATCH.search(line)]
    assert found == []


def test_a_package_per_concept_and_no_file_past_400_lines():
    top = sorted(p.name for p in PACKAGE.iterdir() if p.suffix == ".py")
    assert top == ["__init__.py", "_lazy.py", "cli.py", "errors.py", "seeding.py"]
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert packages == ["aggregate", "config", "crypto", "data", "learning", "privacy",
                        "protocol", "run"]
    long = {str(p.relative_to(ROOT)): n for p in _sources()
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_the_public_api_resolves():
    assert sorted(fedsim.__all__) == fedsim.__all__
    for name in fedsim.__all__:
        assert getattr(fedsim, name) is not None, name
    with pytest.raises(AttributeError):
        fedsim.not_a_name  # noqa: B018


def test_aggregator_and_key_holder_modules_do_not_import_jax():
    code = ("import sys, pickle; "
            "import fedsim.protocol.aggregator, fedsim.protocol.keyholder, "
            "fedsim.protocol.schemes.threshold, fedsim.privacy.steps, fedsim.crypto.sealing; "
            "import fedsim.config, fedsim.aggregate.weighting; "
            "assert 'jax' not in sys.modules, sorted(m for m in sys.modules if 'jax' in m)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=ROOT)
