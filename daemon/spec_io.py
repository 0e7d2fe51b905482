"""Turning whatever a producer put on the queue into a validated `JobSpec`.

The one place where legacy request shapes are recognised and translated, and where the parser learns
the registered kinds. Used by the work-horse before any work, by `python -m daemon enqueue` before
anything reaches Redis, and by `run-local`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .handlers import params_models
from .legacy import looks_legacy, translate_legacy
from .spec import JobSpec, load_spec_json, parse_spec


def parse_job(raw: Any) -> JobSpec:
    if isinstance(raw, str | bytes):
        raw = load_spec_json(raw)  # size cap and strict JSON, before anything looks inside
    if isinstance(raw, Mapping) and looks_legacy(raw):
        raw = translate_legacy(raw)
    return parse_spec(raw, kinds=params_models())


def spec_to_json(spec: JobSpec) -> dict[str, Any]:
    """The normalised spec as plain JSON, as it is put on the queue."""
    return spec.model_dump(mode="json", exclude_none=True)
