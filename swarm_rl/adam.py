"""Adam for members whose weights are the rows of one matrix, each with its own step count and rate.

torch.optim.Adam keeps one step count per tensor and one learning rate per parameter group, so
it cannot serve k members stacked in one tensor; it also imports `torch._dynamo` on first use
(over a second per process, and twenty model processes start at once). The arithmetic is
torch's single-tensor Adam; tests/test_learner.py holds it to it.
"""
from __future__ import annotations

import torch


class StackedAdam:
    """Adam's moments for weights (members, size); member j's step count 0 means no state yet."""

    def __init__(self, members: int, size: int, learning_rates: list[float],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-5) -> None:
        self.betas, self.eps = betas, eps
        self.learning_rates = torch.tensor(learning_rates, dtype=torch.float64)
        self.steps = torch.zeros(members, dtype=torch.float64)
        self.exp_avg = torch.zeros(members, size)
        self.exp_avg_sq = torch.zeros(members, size)

    def step(self, weights: torch.Tensor, grads: torch.Tensor, who: torch.Tensor) -> None:
        """One Adam step, in place, for the rows `who` of `weights`; `grads` is (len(who), size)."""
        beta1, beta2 = self.betas
        self.steps[who] += 1
        steps = self.steps[who]
        step_size = (self.learning_rates[who] / (1 - beta1 ** steps)).float().unsqueeze(1)
        bias_correction2_sqrt = torch.sqrt(1 - beta2 ** steps).float().unsqueeze(1)
        exp_avg = self.exp_avg[who].mul_(beta1).add_(grads, alpha=1 - beta1)
        exp_avg_sq = self.exp_avg_sq[who].mul_(beta2).addcmul_(grads, grads, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
        weights[who] = weights[who] - step_size * exp_avg / denom
        self.exp_avg[who], self.exp_avg_sq[who] = exp_avg, exp_avg_sq
