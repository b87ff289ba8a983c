"""Run configuration: frozen typed schemas (`sections`, `schema`), building them from
mappings (`coerce`), and YAML files with dotted overrides (`files`)."""

from fedsim.config.coerce import from_dict
from fedsim.config.files import apply_overrides, load_config, parse_override, read_yaml, replace
from fedsim.config.schema import RunConfig
from fedsim.config.sections import (
    AdaptiveClippingConfig,
    CryptoConfig,
    DataConfig,
    EvaluationConfig,
    FederationConfig,
    ModelConfig,
    PrivacyConfig,
    ResourcesConfig,
    ResourceSpec,
    ServerOptimizerConfig,
    SynthConfig,
    TeacherConfig,
    TrainConfig,
)

__all__ = [
    "AdaptiveClippingConfig",
    "CryptoConfig",
    "DataConfig",
    "EvaluationConfig",
    "FederationConfig",
    "ModelConfig",
    "PrivacyConfig",
    "ResourceSpec",
    "ResourcesConfig",
    "RunConfig",
    "ServerOptimizerConfig",
    "SynthConfig",
    "TeacherConfig",
    "TrainConfig",
    "apply_overrides",
    "from_dict",
    "load_config",
    "parse_override",
    "read_yaml",
    "replace",
]
