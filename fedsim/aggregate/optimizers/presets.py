"""fedsim's named server optimizers (Reddi et al. 2021; Hsu et al. 2019 for FedAvgM).

Each is an optax optimizer with the papers' defaults; optax is imported on first use,
so validating a config that names one does not load JAX.
"""

from __future__ import annotations

from fedsim.aggregate.optimizers import register_server_optimizer


@register_server_optimizer("fedavg")
def fedavg(learning_rate: float = 1.0):
    """FedAvg: SGD on the averaged delta; rate 1 moves to the client average."""
    import optax

    return optax.sgd(learning_rate)


@register_server_optimizer("fedavgm")
def fedavgm(learning_rate: float = 1.0, momentum: float = 0.9):
    """FedAvg with server momentum (Hsu, Qi and Brown 2019)."""
    import optax

    return optax.sgd(learning_rate, momentum=momentum)


@register_server_optimizer("fedadam")
def fedadam(learning_rate: float = 0.01, b1: float = 0.9, b2: float = 0.99,
            eps: float = 1e-3):
    """FedAdam with the paper's beta_1, beta_2 and adaptivity tau = eps."""
    import optax

    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


@register_server_optimizer("fedyogi")
def fedyogi(learning_rate: float = 0.01, b1: float = 0.9, b2: float = 0.99,
            eps: float = 1e-3):
    """FedYogi: Yogi's additive second-moment update."""
    import optax

    return optax.yogi(learning_rate, b1=b1, b2=b2, eps=eps)


@register_server_optimizer("fedadagrad")
def fedadagrad(learning_rate: float = 0.1, eps: float = 1e-3):
    """FedAdagrad: accumulated squared deltas from zero, adaptivity tau = eps."""
    import optax

    return optax.adagrad(learning_rate, initial_accumulator_value=0.0, eps=eps)
