"""Training a Gaussian splat: gsplat's recipe (simple_trainer defaults) behind our rasterizer switch.

One `Trainer` holds everything a step changes: parameters, Adam moments, the means' lr schedule, the
densification state, the step counter, the camera order and every RNG. `state_dict()` captures it all
and `load_state_dict()` restores it, so a run stopped at step k and resumed elsewhere continues exactly
as if it had not stopped (the recovery issue checkpoints this). On CPU, with the same seed, training is
reproducible bit for bit.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ...errors import JobError
from .quality import psnr, ssim
from .raster import Backend, rasterize
from .strategy import CappedDefaultStrategy

log = logging.getLogger(__name__)

SH_C0 = 0.28209479177387814
"""Band-0 spherical harmonic constant: colour = SH_C0 * sh0 + 0.5."""


@dataclass(frozen=True)
class Camera:
    """One training view: world-to-camera matrix, intrinsics, and the photo as [H, W, 3] in [0, 1]."""

    name: str
    viewmat: torch.Tensor
    K: torch.Tensor  # noqa: N815 - the usual name of the intrinsics matrix
    image: torch.Tensor

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


@dataclass(frozen=True)
class TrainConfig:
    """gsplat simple_trainer's defaults. Legacy param names map as `from_params` shows."""

    steps: int = 7_000
    seed: int = 0
    # Highest SH degree, reached one band per `sh_degree_interval` steps.
    sh_degree: int = 3
    sh_degree_interval: int = 1_000
    # Weight of (1 - SSIM) against L1 in the loss.
    ssim_lambda: float = 0.2
    # Learning rates; the means' decays exponentially from init to final and is scaled by the scene size.
    means_lr_init: float = 1.6e-4
    means_lr_final: float = 1.6e-6
    scales_lr: float = 5e-3
    opacities_lr: float = 5e-2
    quats_lr: float = 1e-3
    sh0_lr: float = 2.5e-3
    shN_lr: float = 2.5e-3 / 20  # noqa: N815 - gsplat's parameter name
    # Densification (gsplat's DefaultStrategy).
    grow_grad2d: float = 2e-4
    refine_start_iter: int = 500
    refine_stop_iter: int = 15_000
    refine_every: int = 100
    reset_every: int = 3_000
    # Memory bound: the model never grows past this many Gaussians.
    max_gaussians: int = 2_000_000
    # Initial Gaussians: opacity, and scale as a multiple of the mean distance to 3 neighbours.
    init_opacity: float = 0.1
    init_scale: float = 1.0

    @classmethod
    def from_params(cls, params: Any, **overrides: Any) -> TrainConfig:
        """Map the job's params (legacy 3DGS names) to gsplat's: position_lr_* → means lr,
        feature_lr → sh0 (and shN = feature_lr / 20), opacity/scaling/rotation_lr → opacities/scales/
        quats, densify_grad_threshold → grow_grad2d, iterations/preset → steps, max_gaussians and
        seed as they are.

        Runs shorter than 5,000 steps start densifying and raising the SH degree earlier, so that a
        short run still does both (from 5,000 steps up these are gsplat's 500 and 1,000). The
        densification interval stays gsplat's 100 steps whatever the length: each pass may double
        the model, and every 10 steps grew 800 SfM points to 136k Gaussians in 300 steps."""
        steps = int(params.steps)
        return cls(
            steps=steps,
            seed=params.seed,
            max_gaussians=params.max_gaussians,
            sh_degree=params.sh_degree,
            sh_degree_interval=min(1_000, max(1, steps // 5)),
            refine_start_iter=min(500, steps // 10),
            means_lr_init=params.position_lr_init,
            means_lr_final=params.position_lr_final,
            sh0_lr=params.feature_lr,
            shN_lr=params.feature_lr / 20,
            opacities_lr=params.opacity_lr,
            scales_lr=params.scaling_lr,
            quats_lr=params.rotation_lr,
            grow_grad2d=params.densify_grad_threshold,
            # gsplat scales the densification window with the run (15k of 30k steps).
            refine_stop_iter=min(15_000, steps // 2),
            **overrides,
        )


@dataclass(frozen=True)
class StepStats:
    step: int
    loss: float
    gaussians: int


def rgb_to_sh(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - 0.5) / SH_C0


def _mean_neighbour_distance(points: torch.Tensor, k: int = 3, chunk: int = 4096) -> torch.Tensor:
    """Mean distance from each point to its k nearest others (chunked: no N×N matrix at once)."""
    out = []
    for start in range(0, len(points), chunk):
        d = torch.cdist(points[start : start + chunk], points)
        d = d.topk(min(k + 1, len(points)), largest=False).values[:, 1:]
        out.append(d.mean(dim=1) if d.numel() else torch.ones(len(d)))
    return torch.cat(out).clamp_min(1e-7)


def init_params(
    points: torch.Tensor, colors: torch.Tensor, config: TrainConfig
) -> dict[str, torch.nn.Parameter]:
    """Gaussians at the SfM points, coloured by them, sized by their neighbours, like simple_trainer."""
    device = points.device
    points, colors = points.cpu(), colors.cpu()
    n = len(points)
    scales = torch.log(_mean_neighbour_distance(points) * config.init_scale).unsqueeze(-1).repeat(1, 3)
    quats = torch.rand((n, 4))
    opacities = torch.logit(torch.full((n,), config.init_opacity))
    k = (config.sh_degree + 1) ** 2
    sh = torch.zeros((n, k, 3))
    sh[:, 0, :] = rgb_to_sh(colors)
    tensors = {
        "means": points.clone(),
        "scales": scales,
        "quats": quats,
        "opacities": opacities,
        "sh0": sh[:, :1, :].contiguous(),
        "shN": sh[:, 1:, :].contiguous(),
    }
    # Random draws happen on the CPU generator (captured in checkpoints), then move to the points' device.
    return {name: torch.nn.Parameter(t.float().to(device)) for name, t in tensors.items()}


@dataclass
class Trainer:
    cameras: Sequence[Camera]
    points: torch.Tensor
    colors: torch.Tensor
    config: TrainConfig
    backend: Backend = "auto"
    step: int = 0
    params: dict[str, torch.nn.Parameter] = field(init=False)
    optimizers: dict[str, torch.optim.Optimizer] = field(init=False)
    strategy: CappedDefaultStrategy = field(init=False)
    strategy_state: dict[str, Any] = field(init=False)
    scene_scale: float = field(init=False)
    _order: list[int] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        seed_everything(self.config.seed)
        centers = torch.stack([torch.linalg.inv(c.viewmat)[:3, 3] for c in self.cameras])
        # simple_trainer: scene scale = 1.1 × the largest camera distance from the cameras' centroid.
        self.scene_scale = float((centers - centers.mean(0)).norm(dim=1).max()) * 1.1 or 1.0
        self.params = init_params(self.points, self.colors, self.config)
        self.optimizers = self._make_optimizers()
        c = self.config
        self.strategy = CappedDefaultStrategy(
            grow_grad2d=c.grow_grad2d,
            refine_start_iter=c.refine_start_iter,
            refine_stop_iter=c.refine_stop_iter,
            refine_every=c.refine_every,
            reset_every=c.reset_every,
            max_gaussians=c.max_gaussians,
        )
        self.strategy.check_sanity(self.params, self.optimizers)
        self.strategy_state = self.strategy.initialize_state(scene_scale=self.scene_scale)

    def _make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        lrs = {
            "means": c.means_lr_init * self.scene_scale,
            "scales": c.scales_lr,
            "quats": c.quats_lr,
            "opacities": c.opacities_lr,
            "sh0": c.sh0_lr,
            "shN": c.shN_lr,
        }
        return {
            name: torch.optim.Adam([{"params": self.params[name], "lr": lr, "name": name}], eps=1e-15)
            for name, lr in lrs.items()
        }

    def _means_lr(self, step: int) -> float:
        c = self.config
        t = min(1.0, step / max(1, c.steps))
        return c.means_lr_init * self.scene_scale * (c.means_lr_final / c.means_lr_init) ** t

    # -- one step ------------------------------------------------------------------------------------

    def _next_camera(self) -> Camera:
        if not self._order:
            # A fresh shuffled pass over the views; drawn from the global generator, which is captured
            # in the state, so a resumed run picks the same next view.
            self._order = torch.randperm(len(self.cameras)).tolist()
        return self.cameras[self._order.pop()]

    def render(self, camera: Camera, sh_degree: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        p = self.params
        degree = self.config.sh_degree if sh_degree is None else sh_degree
        colors, alphas, info = rasterize(
            p["means"],
            p["quats"] / p["quats"].norm(dim=-1, keepdim=True),
            torch.exp(p["scales"]),
            torch.sigmoid(p["opacities"]),
            torch.cat([p["sh0"], p["shN"]], dim=1),
            camera.viewmat[None],
            camera.K[None],
            camera.width,
            camera.height,
            sh_degree=degree,
            backend=self.backend,
        )
        return colors[0].clamp(0.0, 1.0), info

    def train_step(self) -> StepStats:
        camera = self._next_camera()
        degree = min(self.step // self.config.sh_degree_interval, self.config.sh_degree)
        for group in self.optimizers["means"].param_groups:
            group["lr"] = self._means_lr(self.step)
        rendered, info = self.render(camera, sh_degree=degree)
        self.strategy.step_pre_backward(self.params, self.optimizers, self.strategy_state, self.step, info)
        l1 = torch.abs(rendered - camera.image).mean()
        loss = (1 - self.config.ssim_lambda) * l1 + self.config.ssim_lambda * (
            1 - ssim(rendered, camera.image)
        )
        if not torch.isfinite(loss):
            raise JobError(
                f"training diverged at step {self.step}: loss is {loss.item()}", code="non_finite_loss"
            )
        loss.backward()
        for optimizer in self.optimizers.values():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        self.strategy.step_post_backward(self.params, self.optimizers, self.strategy_state, self.step, info)
        self.step += 1
        return StepStats(self.step, float(loss.item()), len(self.params["means"]))

    def train(self, *, on_step: Callable[[StepStats], None] = lambda s: None) -> None:
        while self.step < self.config.steps:
            on_step(self.train_step())

    @torch.no_grad()
    def evaluate(self, cameras: Sequence[Camera]) -> dict[str, float]:
        """Mean PSNR and SSIM over held-out views."""
        if not cameras:
            return {"psnr": math.nan, "ssim": math.nan}
        scores = [(psnr(r, c.image), float(ssim(r, c.image))) for c in cameras for r in [self.render(c)[0]]]
        return {
            "psnr": float(np.mean([s[0] for s in scores])),
            "ssim": float(np.mean([s[1] for s in scores])),
        }

    # -- capture and restore -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "scene_scale": self.scene_scale,
            "params": {k: v.detach().clone() for k, v in self.params.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "strategy_state": {
                k: v.clone() if torch.is_tensor(v) else v for k, v in self.strategy_state.items()
            },
            "order": list(self._order),
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.scene_scale = float(state["scene_scale"])
        self.params = {k: torch.nn.Parameter(v.clone()) for k, v in state["params"].items()}
        self.optimizers = self._make_optimizers()
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        self.strategy_state = {
            k: v.clone() if torch.is_tensor(v) else v for k, v in state["strategy_state"].items()
        }
        self._order = list(state["order"])
        set_rng_state(state["rng"])


def rng_state() -> dict[str, Any]:
    """Every RNG training draws from (torch, NumPy's legacy global, Python's), as tensors and plain
    numbers only: a checkpoint must load with `torch.load(weights_only=True)`, which runs no code."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back what `rng_state` captured."""
    n, p = state["numpy"], state["python"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate((p["version"], tuple(int(x) for x in p["internal"].tolist()), p["gauss_next"]))
    torch.set_rng_state(state["torch"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
