"""Turning whatever a producer put on the queue into a validated `JobSpec`.

The one place where legacy request shapes are recognised and translated, and where the parser learns
the registered kinds. Used by the work-horse before any work, by `python -m daemon enqueue` before
anything reaches Redis, and by `run-local`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import SpecError
from .handlers import params_models, registry
from .legacy import looks_legacy, translate_legacy
from .spec import JobSpec, load_spec_json, parse_spec


def parse_job(raw: Any) -> JobSpec:
    if isinstance(raw, str | bytes):
        raw = load_spec_json(raw)  # size cap and strict JSON, before anything looks inside
    if isinstance(raw, Mapping) and looks_legacy(raw):
        raw = translate_legacy(raw)
    spec = parse_spec(raw, kinds=params_models())
    _check_input_count(spec)
    return spec


def _check_input_count(spec: JobSpec) -> None:
    limit = registry()[spec.kind].max_inputs
    if limit is not None and len(spec.inputs) > limit:
        what = "one video" if spec.kind == "splat_video" else f"at most {limit} inputs"
        raise SpecError(
            f"inputs: a {spec.kind} job takes {what}, got {len(spec.inputs)}"
            + (" (send photos as a splat job)" if spec.kind == "splat_video" else ""),
            code="too_many_inputs",
        )


def spec_to_json(spec: JobSpec) -> dict[str, Any]:
    """The normalised spec as plain JSON, as it is put on the queue."""
    return spec.model_dump(mode="json", exclude_none=True)
