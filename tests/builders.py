"""Small configs for tests."""

from __future__ import annotations

from fedsim.config import RunConfig, from_dict


def tiny_config(**sections) -> RunConfig:
    """A config small enough for a test: 3 hospitals x ~300 patients, a width-8 MLP."""
    base = {
        "name": "tiny",
        "seed": 0,
        "data": {"synth": {"num_hospitals": 3, "patients_per_hospital": 300,
                           "vocab_size": 500, "mean_codes": 6.0}},
        "model": {"depth": 2, "width": 8},
        "train": {"lr": 0.01, "batch_size": 32, "local_steps": 5},
        "federation": {"rounds": 3, "clients_per_round": 3, "min_clients": 2},
        "crypto": {"profile": "test", "allow_insecure": True, "key_holders": 3},
        "resources": {"client": {"num_cpus": 0.25}, "aggregator": {"num_cpus": 0.25},
                      "keyholder": {"num_cpus": 0.1}},
    }
    for name, values in sections.items():
        merged = dict(base.get(name, {}))
        merged.update(values)
        base[name] = merged
    return from_dict(base)
