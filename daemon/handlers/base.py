"""What a job kind declares, and the params config every kind shares.

A kind is one `Handler`: its name, its params model (pydantic only, so the worker's parent validates
specs without importing torch), its time limit, its named stages and the function that runs them. The
function receives a `JobContext` (daemon/attempt/context.py) and uses only what `Context` lists: the
spec and params, a scratch folder, named stages with progress, inputs to fetch, a place for outputs,
checkpoints and interrupts. It never touches Redis, Supabase, S3 or HTTP itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

STRICT_PARAMS = ConfigDict(
    strict=True, extra="forbid", frozen=True, allow_inf_nan=False, use_attribute_docstrings=True
)
"""Model config shared by every kind's params: no coercion, no unknown keys, no NaN/Infinity, and the
attribute docstrings become the JSON Schema descriptions."""


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
    run: Callable[[Any], None]
    description: str
    # Most inputs a job of this kind takes (None: the spec's own cap); more is refused at enqueue.
    max_inputs: int | None = None
    # What one input of this kind is, and a hint, for the refusal of a spec with too many inputs.
    input_noun: str = "input"
    too_many_inputs_hint: str = ""
