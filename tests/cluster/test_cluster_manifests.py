"""configs/cluster: valid YAML with the fields fedsim's cluster docs rely on.

These manifests cannot be run here (no cloud, no Kubernetes); this is what can be checked.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedsim.config import from_dict, load_config
from fedsim.errors import ConfigError

CLUSTER = Path(__file__).resolve().parents[2] / "configs" / "cluster"


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def test_cluster_launcher_has_head_cpu_and_gpu_node_types():
    cfg = _load("aws.yaml")
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert {"cpu_worker", "gpu_worker"} <= set(types)
    assert types["cpu_worker"]["min_workers"] >= 3  # one node per default key holder
    setup = "\n".join(cfg["setup_commands"])
    assert "--python 3.10" in setup and "pip install" in setup and "-e ~/fedsim" in setup
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP:6379" in c for c in cfg["worker_start_ray_commands"])


def test_rayjob_runs_the_paper_config_on_an_authenticated_cluster():
    job = _load("kuberay-rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["entrypoint"].startswith("fedsim run configs/paper.yaml --address auto")
    spec = job["spec"]["rayClusterSpec"]
    assert spec["authOptions"]["mode"] == "token"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert groups["cpu"]["replicas"] >= 3
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == 1


def test_the_paper_config_still_loads():
    assert load_config(CLUSTER.parent / "paper.yaml").federation.mode == "he"


def test_keyholder_spread_accepts_only_strict_or_best_effort():
    assert from_dict({}).resources.keyholder_spread == "best_effort"
    cfg = from_dict({"resources": {"keyholder_spread": "strict"}})
    assert cfg.resources.keyholder_spread == "strict"
    with pytest.raises(ConfigError, match=r"resources.keyholder_spread: must be one of "
                                          r"'strict', 'best_effort', got 'always'"):
        from_dict({"resources": {"keyholder_spread": "always"}})
    with pytest.raises(ConfigError, match="resources.placement_timeout_s: must be > 0"):
        from_dict({"resources": {"placement_timeout_s": 0}})
