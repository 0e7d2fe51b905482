"""Render the committed JSON Schema of the job spec (`schema/job-spec.v1.json`).

The file is generated, never edited by hand; a test compares it with `render_schema(SCHEMA_KINDS)`.
Regenerate it after changing a spec or params model:

    python -m daemon.schema_file > schema/job-spec.v1.json

(the daemon's CLI will offer the same as `python -m daemon schema > schema/job-spec.v1.json`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from pydantic import BaseModel

from daemon.handlers.params_inspect import InspectParams
from daemon.handlers.params_splat import SplatParams
from daemon.handlers.params_video import SplatVideoParams
from daemon.spec import spec_json_schema

SCHEMA_KINDS: Mapping[str, type[BaseModel]] = {
    "splat": SplatParams,
    "splat_video": SplatVideoParams,
    "inspect": InspectParams,
}
"""The kinds the committed schema describes. Keep in step with the daemon's handler registry."""


def render_schema(kinds: Mapping[str, type[BaseModel]]) -> str:
    """The schema as stable text: sorted keys, two-space indent, ASCII only, trailing newline."""
    return json.dumps(spec_json_schema(kinds), indent=2, sort_keys=True, ensure_ascii=True) + "\n"


if __name__ == "__main__":
    print(render_schema(SCHEMA_KINDS), end="")
