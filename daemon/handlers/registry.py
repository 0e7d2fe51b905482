"""The registry of job kinds, and turning whatever a producer put on the queue into a `JobSpec` of one.

One module (or package) per kind; each declares a `Handler` (handlers/base.py). The registry is what the
spec validator checks `kind` against, what sets each kind's rq timeout, and what the runner dispatches
on. Handlers import their heavy dependencies (torch, pycolmap) inside `run`, so the worker's parent
process, which only routes jobs, never loads them (and never touches CUDA).

`parse_job` is used by the work-horse before any work, by `python -m daemon enqueue` before anything
reaches Redis, by `run-local`, and by the worker parent when it reports a lost attempt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from ..errors import SpecError
from ..spec.legacy import looks_legacy, translate_legacy
from ..spec.model import JobSpec, load_spec_json, parse_spec
from .base import Handler


def _load() -> dict[str, Handler]:
    from .inspect import handler as inspect_kind
    from .mesh import handler as mesh_kind
    from .pointcloud import handler as pointcloud_kind
    from .splat import handler as splat_kind

    handlers = [inspect_kind.HANDLER, splat_kind.HANDLER, splat_kind.VIDEO_HANDLER, mesh_kind.HANDLER,
                pointcloud_kind.HANDLER]  # fmt: skip
    return {h.kind: h for h in handlers}


_REGISTRY: dict[str, Handler] | None = None


def registry() -> Mapping[str, Handler]:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _load()
    return _REGISTRY


def params_models() -> dict[str, type[BaseModel]]:
    """What the spec parser needs: kind → params model. Only registered kinds, so an unbuilt kind is
    refused as unknown, not accepted and lost."""
    return {kind: h.params_model for kind, h in registry().items()}


def input_limits() -> dict[str, int]:
    """Kind → most inputs a job of it takes, for the kinds that cap them below the spec's own cap."""
    return {kind: h.max_inputs for kind, h in registry().items() if h.max_inputs is not None}


def parse_job(raw: Any) -> JobSpec[Any]:
    """A raw job argument (JSON text, a spec or a legacy request) → a validated spec of a known kind."""
    if isinstance(raw, str | bytes):
        raw = load_spec_json(raw)  # size cap and strict JSON, before anything looks inside
    if isinstance(raw, Mapping) and looks_legacy(raw):
        raw = translate_legacy(raw)
    spec = parse_spec(raw, kinds=params_models())
    _check_input_count(spec)
    return spec


def peek_kind(raw: Any) -> str | None:
    """The kind a job names, read without validating the spec: the worker parent calls this before every
    fork, where a full parse would cost up to tens of ms on a big spec (the horse validates anyway)."""
    try:
        if isinstance(raw, Mapping) and not looks_legacy(raw):
            kind = raw.get("kind")
            return kind if isinstance(kind, str) else None
        return parse_job(raw).kind  # a JSON string or a legacy shape: rare, parse it
    except Exception:
        return None


def _check_input_count(spec: JobSpec[Any]) -> None:
    handler = registry()[spec.kind]
    limit = handler.max_inputs
    if limit is not None and len(spec.inputs) > limit:
        noun = handler.input_noun
        what = f"one {noun}" if limit == 1 else f"at most {limit} {noun}s"
        hint = f" ({handler.too_many_inputs_hint})" if handler.too_many_inputs_hint else ""
        raise SpecError(
            f"inputs: a {spec.kind} job takes {what}, got {len(spec.inputs)}{hint}", code="too_many_inputs"
        )
