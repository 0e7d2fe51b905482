"""Stage `train` around the Trainer (train.py): interrupts taken at step boundaries, checkpoints of
the training in progress (resume.py), the history behind curves.png; and the trained model it leaves
(`Workspace.model`), which `evaluate` and `export` load back (job.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch

from ...errors import JobError, JobPreempted
from ..base import Context
from . import resume
from .params import SplatParams
from .scene import Scene
from .train import Camera, StepStats, TrainConfig, Trainer
from .workspace import Workspace

log = logging.getLogger(__name__)

CURVE_POINTS = 200
"""Training-history samples kept for the curves (every steps/200-th step)."""

EVAL_POINTS = 10
"""Held-out PSNR evaluations during training, for the curves."""

CURVE_EVAL_VIEWS = 4
"""At most this many views are rendered for each of those evaluations (the final one uses all)."""


@contextlib.contextmanager
def memory_guard(stage: str, params: SplatParams) -> Iterator[None]:
    """Out of memory (GPU or host) becomes a job error saying which knobs bound memory."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError) as exc:
        raise JobError(
            f"out of memory during {stage} ({type(exc).__name__}); lower max_image_size "
            f"(now {params.max_image_size}) or max_gaussians (now {params.max_gaussians})",
            code="out_of_memory",
        ) from None


def train(ws: Workspace, scene: Scene, params: SplatParams, ctx: Context) -> dict[str, Any]:
    """Train, continuing from a restored training state if there is one. Interrupts are taken at
    step boundaries only: a preemption first writes a checkpoint, so nothing trained is lost."""
    done = ws.reused("train")
    if done is not None:
        return done
    config = TrainConfig.from_params(params)
    trainer = Trainer(scene.train, scene.points, scene.colors, config)
    views = eval_views(scene)
    with memory_guard("training", params):
        run = _start_or_resume(ws, trainer, views)
        curves = Curves(run["history"], config.steps)
        while trainer.step < config.steps:
            with ctx.interrupts.shielded():
                stats = trainer.train_step()
                if curves.wants_eval(stats.step):
                    score = trainer.evaluate(views[:CURVE_EVAL_VIEWS])["psnr"]
                    curves.add_eval(stats, score)
                curves.add(stats)
                ctx.progress(stats.step / config.steps)
                if _checkpoint_due(ctx):
                    resume.save_training(ctx, ws, {**run, "trainer": trainer.state_dict()})
                ctx.interrupts.raise_requested()
    ws.model.parent.mkdir(parents=True, exist_ok=True)
    params_cpu = {k: v.detach().cpu() for k, v in trainer.params.items()}
    torch.save({"params": params_cpu, "history": run["history"]}, ws.model)
    summary = {
        "steps": config.steps,
        "seed": config.seed,
        "device": str(scene.points.device),
        "backend": "gsplat" if scene.points.is_cuda else "cpu",
        "gaussians": len(params_cpu["means"]),
        "train_views": len(scene.train),
        "initial": run["initial"],
    }
    ws.record("train", summary)
    return summary


def _start_or_resume(ws: Workspace, trainer: Trainer, views: list[Camera]) -> dict[str, Any]:
    """The run's history and initial metrics: from the restored training state, or fresh."""
    saved = resume.load_training(ws)
    if saved is None:
        return {"history": {k: [] for k in Curves.KEYS}, "initial": trainer.evaluate(views)}
    trainer.load_state_dict(saved["trainer"])
    log.info("training resumes at step %d", trainer.step)
    return {"history": saved["history"], "initial": saved["initial"]}


def _checkpoint_due(ctx: Context) -> bool:
    """A checkpoint is written when the job is being preempted, when one was asked for (rebalance
    notice), or when the periodic interval has passed."""
    if ctx.checkpoints is None:
        return False
    asked = ctx.interrupts.checkpoint_requested
    ctx.interrupts.checkpoint_requested = False
    return ctx.interrupts.requested is JobPreempted or asked or ctx.checkpoints.due()


class Curves:
    """The training history behind curves.png: every steps/CURVE_POINTS-th step, and a held-out
    PSNR every steps/EVAL_POINTS-th (also logged)."""

    KEYS = ("step", "loss", "gaussians", "eval_step", "psnr")

    def __init__(self, history: dict[str, list[float]], steps: int) -> None:
        self.history, self.steps = history, steps
        self.curve_every = max(1, steps // CURVE_POINTS)
        self.eval_every = max(1, steps // EVAL_POINTS)

    def wants_eval(self, step: int) -> bool:
        return step % self.eval_every == 0 or step == self.steps

    def add(self, stats: StepStats) -> None:
        if stats.step % self.curve_every == 0 or stats.step == self.steps:
            self.history["step"].append(stats.step)
            self.history["loss"].append(stats.loss)
            self.history["gaussians"].append(stats.gaussians)

    def add_eval(self, stats: StepStats, score: float) -> None:
        self.history["eval_step"].append(stats.step)
        self.history["psnr"].append(score)
        log.info(
            "step %d/%d: loss %.4f, %d Gaussians, PSNR %.2f dB",
            stats.step, self.steps, stats.loss, stats.gaussians, score,
        )  # fmt: skip


def eval_views(scene: Scene) -> list[Camera]:
    """The held-out views; without any (a small capture), the training views themselves."""
    return scene.test or scene.train


def trainer_with_model(ws: Workspace, scene: Scene, params: SplatParams) -> tuple[Trainer, dict[str, Any]]:
    """A trainer holding the trained Gaussians (model.pt), and the training history saved with them."""
    saved = torch.load(ws.model, weights_only=True)
    trainer = Trainer(scene.train, scene.points, scene.colors, TrainConfig.from_params(params))
    device = scene.points.device
    trainer.params = {k: torch.nn.Parameter(v.to(device)) for k, v in saved["params"].items()}
    return trainer, saved["history"]
