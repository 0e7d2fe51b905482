"""What a job kind declares, and the params config every kind shares.

A kind is one `Handler`: its name, its params model (pydantic only, so the worker's parent validates
specs without importing torch), its time limit, its named stages and the function that runs them. The
function receives a `JobContext` (daemon/attempt/context.py) and uses only what `Context` lists: the
spec and params, a scratch folder, named stages with progress, inputs to fetch, a place for outputs,
checkpoints and interrupts. It never touches Redis, Supabase, S3 or HTTP itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict

from ..spec.model import JobSpec

if TYPE_CHECKING:
    from ..config import Settings

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
    run: Callable[[Context], None]
    description: str
    # Most inputs a job of this kind takes (None: the spec's own cap); more is refused at enqueue.
    max_inputs: int | None = None
    # What one input of this kind is, and a hint, for the refusal of a spec with too many inputs.
    input_noun: str = "input"
    too_many_inputs_hint: str = ""


# --- What a handler may use of its attempt ---------------------------------------------------------
# Implemented by `daemon.attempt.context.JobContext` (and its collaborators); spelled here as protocols
# so a handler depends on this module only, never on the attempt machinery or the adapters behind it.


class Interruptible(Protocol):
    """The attempt's interrupt state: a preemption or cancel asked by signal, a checkpoint asked by a
    spot rebalance recommendation."""

    @property
    def requested(self) -> Any: ...

    # Set by the signal; the handler clears it once it has written the checkpoint.
    checkpoint_requested: bool

    def raise_if_requested(self) -> None: ...

    def raise_requested(self) -> None: ...

    def shielded(self) -> AbstractContextManager[None]: ...


class CheckpointStore(Protocol):
    """The job's checkpoints (daemon/adapters/checkpoints.py): files added, then committed together
    with the finished stages' records; the newest intact one restored by a later attempt."""

    # The files of the next commit; a handler drops one that a later file supersedes.
    @property
    def entries(self) -> MutableMapping[str, Any]: ...

    def add(self, name: str, path: Path) -> Any: ...

    def commit(self, records: Mapping[str, Any] | None = None) -> str: ...

    def due(self) -> bool: ...

    def restore(self, into: Path) -> Any: ...


class Context(Protocol):
    """Everything a handler's `run` may use."""

    # What the job reports besides its outputs (the splat manifest); wall seconds per finished stage.
    result: dict[str, Any] | None
    timings: dict[str, float]

    @property
    def spec(self) -> JobSpec[Any]: ...

    @property
    def attempt(self) -> int: ...

    @property
    def workdir(self) -> Path: ...

    @property
    def settings(self) -> Settings | None: ...

    @property
    def checkpoints(self) -> CheckpointStore | None: ...

    @property
    def interrupts(self) -> Interruptible: ...

    @property
    def outputs(self) -> Mapping[str, Any]: ...

    @property
    def job_id(self) -> str: ...

    @property
    def params(self) -> Any: ...

    def stage(self, name: str) -> AbstractContextManager[None]: ...

    def progress(self, fraction: float) -> None: ...

    def fetch_inputs(
        self, accept: Callable[[str, bytes], bool] | None = None, *, max_bytes: int | None = None
    ) -> list[Path]: ...

    def put_output(self, name: str, path: Path, content_type: str) -> Any: ...
