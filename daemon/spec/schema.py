"""Render the committed JSON Schema of the job spec (`schema/job-spec.v1.json`).

The file is generated, never edited by hand, from the registered kinds (`daemon.handlers`); a test
compares it with `render_schema(params_models(), input_limits())`. Regenerate it after changing a spec
or params model, or registering a kind:

    make schema        # = python -m daemon schema > schema/job-spec.v1.json
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from pydantic import BaseModel

from .model import spec_json_schema


def render_schema(kinds: Mapping[str, type[BaseModel]], max_inputs: Mapping[str, int] | None = None) -> str:
    """The schema as stable text: sorted keys, two-space indent, ASCII only, trailing newline."""
    schema = spec_json_schema(kinds, max_inputs)
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=True) + "\n"
