"""Data layer: synthetic EHR generation, Parquet/CSV loading and per-hospital partitioning.

No JAX and no Ray here: numpy and pyarrow only (scikit-learn for the reference model).
"""

from fedsim.data.dataset import SPLITS, ClientData, FederatedDataset, Split
from fedsim.data.loader import (
    CategoricalColumn,
    ColumnSpec,
    DataWarning,
    load_table,
    partition,
    synthetic_dataset,
)
from fedsim.data.reference import reference_logistic_auc
from fedsim.data.synth import SynthSpec, generate_ehr, write_table
from fedsim.data.teacher import TeacherSpec, teacher_dataset

__all__ = [
    "SPLITS",
    "CategoricalColumn",
    "ClientData",
    "ColumnSpec",
    "DataWarning",
    "FederatedDataset",
    "Split",
    "SynthSpec",
    "TeacherSpec",
    "generate_ehr",
    "load_table",
    "partition",
    "reference_logistic_auc",
    "synthetic_dataset",
    "teacher_dataset",
    "write_table",
]
