"""Adam for members stacked in one tensor, each with its own step count and learning rate.

torch.optim.Adam keeps one step count per tensor and one learning rate per parameter group, so
it cannot serve k members whose weights are stacked along a first axis; it also imports
`torch._dynamo` on first use (over a second per process, and twenty model processes start at
once). The arithmetic is torch's single-tensor Adam; tests/test_learner.py holds it to it.
"""
from __future__ import annotations

import torch


class StackedAdam:
    """Adam moments for stacked tensors {name: (k, ...)}; member j's step count 0 means no state yet."""

    def __init__(self, params: dict[str, torch.Tensor], learning_rates: list[float],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-5) -> None:
        self.betas, self.eps = betas, eps
        self.learning_rates = torch.tensor(learning_rates, dtype=torch.float64)
        self.steps = torch.zeros(len(learning_rates), dtype=torch.float64)
        self.exp_avg = {name: torch.zeros_like(p) for name, p in params.items()}
        self.exp_avg_sq = {name: torch.zeros_like(p) for name, p in params.items()}

    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], who: torch.Tensor) -> None:
        """One Adam step, in place, for the members `who`; grads are (len(who), ...)."""
        beta1, beta2 = self.betas
        self.steps[who] += 1
        steps = self.steps[who]
        step_size = (self.learning_rates[who] / (1 - beta1 ** steps)).float()
        bias_correction2_sqrt = torch.sqrt(1 - beta2 ** steps).float()
        for name, grad in grads.items():
            shape = (-1,) + (1,) * (grad.dim() - 1)
            exp_avg = self.exp_avg[name][who].mul_(beta1).add_(grad, alpha=1 - beta1)
            exp_avg_sq = self.exp_avg_sq[name][who].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt.view(shape)).add_(self.eps)
            params[name][who] = params[name][who] - step_size.view(shape) * exp_avg / denom
            self.exp_avg[name][who], self.exp_avg_sq[name][who] = exp_avg, exp_avg_sq
