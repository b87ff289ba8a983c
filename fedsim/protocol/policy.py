"""What a key holder agrees to decrypt: its own policy, from the run config it was given.

A key holder never takes its rules from the coordinator's context bytes: it is started
with a `HolderPolicy` built from the run config (in a deployment, the consortium's
agreement) and refuses a context, or a request, outside it. `check_context` recomputes
what the flooding must be from the holder's own noise estimate; the decryption budget
tau (ciphertexts this holder will ever partially decrypt) comes from the planned rounds
and model size, and the holder counts against it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from fedsim.crypto.flooding import ESTIMATE_MARGIN_BITS
from fedsim.errors import CryptoError
from fedsim.protocol.evaluation import EvaluationPlan

# A context's noise estimate may come out this much below the holder's own: both are
# measurements with throwaway keys (std 0.02 bits on the secure ring, 0.06 bits on the
# small test ring, 2026-12-01), and the context's flooding adds the same margin on top
# of its estimate, so a context at the tolerance still floods for the holder's own
# estimate (the margin is what a dishonest context maker could shave, nothing more).
ESTIMATE_TOLERANCE_BITS = ESTIMATE_MARGIN_BITS
OWN_ESTIMATES = 3  # the holder's own estimate: the median of this many measurements


def decryption_budget(rounds: int, per_round: int, num_holders: int,
                      threshold: int | None) -> int:
    """Ciphertexts one holder decrypts over a run: every round once, plus, in t-of-n, one
    more round for each holder that may be lost (the survivors decrypt that round again
    as a new set): at most ``num_holders - threshold`` of them."""
    spare = 0 if threshold is None else num_holders - threshold
    return max(1, (rounds + spare) * per_round)


def run_budget(rounds: int, per_round: int, num_holders: int, threshold: int | None,
               evaluation: EvaluationPlan | None, context: Any) -> int:
    """`decryption_budget` of the training sums plus that of the evaluation sums (their
    size from ``evaluation``'s codec under ``context``)."""
    total = decryption_budget(rounds, per_round, num_holders, threshold)
    if evaluation is not None:
        total += decryption_budget(evaluation.evaluations, evaluation.ciphertexts(context),
                                   num_holders, threshold)
    return total


@dataclass(frozen=True)
class HolderPolicy:
    """A key holder's rules; see the module docstring."""

    run_id: str
    profile: str
    allow_insecure: bool
    accept_unflooded: bool
    statistical_security: int
    num_holders: int
    threshold: int | None
    min_clients: int
    max_contributors: int
    rounds: int
    num_values: int  # values per contribution: parameters and reserved slots
    noise_batches: int  # 1 when the aggregator adds DP noise to every sum, else 0
    # Federated evaluation's public plan (None: no evaluation sum is ever decrypted)
    evaluation: EvaluationPlan | None = None

    @classmethod
    def from_config(cls, cfg: Any, *, run_id: str, num_values: int, noise_batches: int,
                    max_contributors: int, evaluation: EvaluationPlan | None = None
                    ) -> HolderPolicy:
        c, fed = cfg.crypto, cfg.federation
        return cls(run_id=run_id, profile=c.profile, allow_insecure=c.allow_insecure,
                   accept_unflooded=c.accept_unflooded_decryption,
                   statistical_security=c.statistical_security, num_holders=c.key_holders,
                   threshold=c.threshold, min_clients=fed.min_clients,
                   max_contributors=max_contributors, rounds=fed.rounds,
                   num_values=num_values, noise_batches=noise_batches,
                   evaluation=evaluation)

    def ciphertexts_per_round(self, context: Any) -> int:
        return -(-self.num_values // context.values_per_ciphertext)

    def budget(self, context: Any) -> int:
        """tau: the ciphertexts this holder will partially decrypt over the run (every
        round's sum, and every evaluation's)."""
        return run_budget(self.rounds, self.ciphertexts_per_round(context), self.num_holders,
                          self.threshold, self.evaluation, context)

    @property
    def most_summed(self) -> int:
        """The most contributions one decrypted sum may have: a round's cap, or every
        hospital in an evaluation."""
        return max(self.max_contributors,
                   self.evaluation.contributors if self.evaluation is not None else 0)

    def check_context(self, context: Any) -> None:
        """Raise `CryptoError` naming the problem unless ``context`` is one this holder
        agreed to: the configured profile, flooding sized (by the holder's own estimate)
        for this run's contributors, holders, decryptions and statistical security."""
        from fedsim.crypto.context import estimate_noise

        spec = context.spec
        if context.profile != self.profile:
            raise CryptoError(f"context of profile {context.profile!r}, but the run "
                              f"configured {self.profile!r}")
        if spec.insecure and not self.allow_insecure:
            raise CryptoError(f"context of the insecure profile {context.profile!r} and "
                              "crypto.allow_insecure is not set")
        if not spec.flooding:
            if not self.accept_unflooded:
                raise CryptoError(f"profile {context.profile!r} does not flood decryption "
                                  "shares; set crypto.accept_unflooded_decryption: true to "
                                  "accept that")
            return
        if context.max_contributors < self.most_summed or \
                context.max_key_holders < self.num_holders:
            raise CryptoError(f"context sized for {context.max_contributors} contributors "
                              f"and {context.max_key_holders} holders, the run has "
                              f"{self.most_summed} and {self.num_holders}")
        if context.max_decryptions < self.budget(context):
            raise CryptoError(f"context floods for {context.max_decryptions} decryptions, "
                              f"the run needs {self.budget(context)}")
        if context.statistical_security < self.statistical_security:
            raise CryptoError(f"context floods for {context.statistical_security}-bit "
                              f"statistical security, the run asks "
                              f"{self.statistical_security}")
        own = statistics.median(estimate_noise(context.profile, self.most_summed,
                                               self.num_holders)
                                for _ in range(OWN_ESTIMATES))
        if context.measured_noise is None or \
                context.measured_noise < own - ESTIMATE_TOLERANCE_BITS:
            raise CryptoError(
                f"context's noise estimate 2^{context.measured_noise} is below this "
                f"holder's own 2^{own:.2f}: its flooding would be too small")
        needed = context.flooding_sigma_for(own - ESTIMATE_TOLERANCE_BITS)
        if not context.share_noise_sigma >= needed * (1 - 1e-9) or math.isnan(needed):
            raise CryptoError(f"context floods shares with sigma 2^"
                              f"{math.log2(context.share_noise_sigma):.2f}, this holder "
                              f"requires at least 2^{math.log2(needed):.2f}")
