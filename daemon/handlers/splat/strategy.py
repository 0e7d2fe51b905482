"""Densification: gsplat's `DefaultStrategy`, with its opacity-reset bug worked around and a cap on
the number of Gaussians.

gsplat 1.5.3 tests `step % self.reset_every == 0 & step > 0`. `&` binds tighter than the comparisons,
so this reads `step % reset_every == (0 & step) > 0`, a chained comparison that is never true: opacities
are never reset (fixed only on gsplat's main branch). We run the reset ourselves after the parent's
post-backward hook.

The cap bounds memory: growth stops when the model reaches `max_gaussians`, and a growth round that
overshoots it is trimmed back by removing the least opaque Gaussians (the ones contributing least to
any image); pruning goes on as usual.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import remove, reset_opa


@dataclass
class CappedDefaultStrategy(DefaultStrategy):
    # Largest number of Gaussians the model may grow to (memory bound); 0 means no cap.
    max_gaussians: int = 0

    def step_post_backward(
        self,
        params: dict[str, torch.nn.Parameter],
        optimizers: dict[str, torch.optim.Optimizer],
        state: dict[str, Any],
        step: int,
        info: dict[str, Any],
        packed: bool = False,
    ) -> None:
        super().step_post_backward(params, optimizers, state, step, info, packed=packed)
        if step < self.refine_stop_iter and step > 0 and step % self.reset_every == 0:
            reset_opa(params=params, optimizers=optimizers, state=state, value=self.prune_opa * 2.0)

    def _grow_gs(self, params: Any, optimizers: Any, state: dict[str, Any], step: int) -> tuple[int, int]:
        if self.max_gaussians and len(params["means"]) >= self.max_gaussians:
            return 0, 0
        n_dupli, n_split = super()._grow_gs(params, optimizers, state, step)
        count = len(params["means"])
        if self.max_gaussians and count > self.max_gaussians:
            order = torch.argsort(params["opacities"].detach().flatten())
            excess = torch.zeros(count, dtype=torch.bool, device=params["means"].device)
            excess[order[: count - self.max_gaussians]] = True
            remove(params=params, optimizers=optimizers, state=state, mask=excess)
        return n_dupli, n_split
