"""The registry of job kinds. One module (or package) per kind; each declares a `Handler`.

The registry is what the spec validator checks `kind` against, what sets each kind's rq timeout, and
what the runner dispatches on. Handlers import their heavy dependencies (torch, pycolmap) inside `run`,
so the worker's parent process, which only routes jobs, never loads them (and never touches CUDA).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel

if TYPE_CHECKING:
    from ..context import JobContext


@dataclass(frozen=True)
class Stage:
    """A named step of a handler and its share of the job's progress bar (weights are relative)."""

    name: str
    weight: float


@dataclass(frozen=True)
class Handler:
    kind: str
    params_model: type[BaseModel]
    # Wall-clock cap for one attempt, passed to rq as the job timeout (rq's default of 180 s is wrong
    # for every kind we have).
    timeout_s: int
    stages: tuple[Stage, ...]
    run: Callable[[JobContext], None]
    description: str
    # Most inputs a job of this kind takes (None: the spec's own cap); more is refused at enqueue.
    max_inputs: int | None = None


def _load() -> dict[str, Handler]:
    from . import inspect as inspect_kind
    from .splat import handler as splat_kind

    handlers = [inspect_kind.HANDLER, splat_kind.HANDLER, splat_kind.VIDEO_HANDLER]
    return {h.kind: h for h in handlers}


_REGISTRY: dict[str, Handler] | None = None


def registry() -> Mapping[str, Handler]:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _load()
    return _REGISTRY


def params_models() -> dict[str, type[BaseModel]]:
    """What the spec parser needs: kind → params model. Includes kinds whose handler is not built yet
    only if they are registered, so an unbuilt kind is refused as unknown, not accepted and lost."""
    return {kind: h.params_model for kind, h in registry().items()}


def input_limits() -> dict[str, int]:
    """Kind → most inputs a job of it takes, for the kinds that cap them below the spec's own cap."""
    return {kind: h.max_inputs for kind, h in registry().items() if h.max_inputs is not None}
