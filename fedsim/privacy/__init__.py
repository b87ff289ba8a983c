"""Differential privacy for fedsim: clipping, mechanisms, accounting, DP-SGD, the plan.

Client level (a hospital is the privacy unit): clip each update in the mechanism's norm
(:func:`clip_l2` for Gaussian, :func:`clip_l1` for Laplace), noise the sum with a
registered `Mechanism` (``sample`` at the aggregator, or ``share`` at every client),
and report epsilon with an :class:`Accountant` over an :class:`AccountingSpec`. Record
level (a patient): DP-SGD with :func:`make_dpsgd_step`, accounted with a
:class:`RecordLevelSpec`. `plan_privacy` turns a config into a run's plan and steps.

``fedsim.privacy.dpsgd`` (JAX) and the plan load lazily on first use of their names,
so the aggregator and key holders can import this package without importing JAX.
"""

from __future__ import annotations

from fedsim._lazy import lazy_names
from fedsim.privacy.accountant import (
    Accountant,
    calibrate_dpsgd_noise_multiplier,
    calibrate_noise_multiplier,
    epsilon,
    make_library_accountant,
)
from fedsim.privacy.adaptive_clipping import (
    AdaptiveClipSpec,
    AdaptiveClipState,
    clip_indicator,
    effective_noise_multiplier,
    update_clip,
    update_noise_multiplier,
)
from fedsim.privacy.clipping import clip_l1, clip_l2, l1_norm, l2_norm
from fedsim.privacy.events import AccountingSpec, RecordLevelSpec, dp_event, dpsgd_event
from fedsim.privacy.mechanisms import (
    Mechanism,
    check_survivors,
    make_mechanism,
    mechanism_class,
    mechanism_names,
    register_mechanism,
)

__all__ = [
    "Accountant",
    "AccountingSpec",
    "AdaptiveClipSpec",
    "AdaptiveClipState",
    "ClientLevelPlan",
    "Mechanism",
    "RecordLevelPlan",
    "RecordLevelSpec",
    "calibrate_dpsgd_noise_multiplier",
    "calibrate_noise_multiplier",
    "check_survivors",
    "clip_indicator",
    "clip_l1",
    "clip_l2",
    "dp_event",
    "dpsgd_event",
    "effective_noise_multiplier",
    "epsilon",
    "l1_norm",
    "l2_norm",
    "make_dpsgd_step",
    "make_library_accountant",
    "make_mechanism",
    "mechanism_class",
    "mechanism_names",
    "plan_privacy",
    "poisson_batch_indices",
    "poisson_max_batch",
    "register_mechanism",
    "update_clip",
    "update_noise_multiplier",
]

_LAZY = {
    **{name: "fedsim.privacy.dpsgd"
       for name in ("make_dpsgd_step", "poisson_batch_indices", "poisson_max_batch")},
    **{name: "fedsim.privacy.plan"
       for name in ("ClientLevelPlan", "RecordLevelPlan", "plan_privacy")},
}
__getattr__ = lazy_names(__name__, _LAZY)
