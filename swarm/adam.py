"""Adam without the compiler's start-up cost, for the model processes.

torch 2.13's optimizers import `torch._dynamo` (the torch.compile tracer) on first use:
`add_param_group` and `zero_grad` are wrapped in `torch._disable_dynamo`, which imports it to
mark them "never compile", and `Adam.step` imports it to insert a graph break. That import is
1.2-1.5 CPU-seconds, about half of a model process's start-up, and twenty models share two cores.
Nothing in this project is compiled, so this Adam calls the undecorated methods: the same
arithmetic, without the import.
"""
from __future__ import annotations

import torch
from torch.optim.optimizer import Optimizer


class Adam(torch.optim.Adam):
    """torch.optim.Adam, minus the torch._dynamo import (eager mode only)."""

    def add_param_group(self, param_group: dict) -> None:
        Optimizer.add_param_group.__wrapped__(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        Optimizer.zero_grad.__wrapped__(self, set_to_none)

    @torch.no_grad()  # what the undecorated step expects (torch's wrapper sets it the same way)
    def step(self, closure=None):
        return torch.optim.Adam.step.__wrapped__(self, closure)
