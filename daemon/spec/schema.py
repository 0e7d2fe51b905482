"""The job spec as JSON Schema (draft 2020-12), for the web app, and the committed copy of it.

`spec_json_schema` publishes the contract that `daemon.spec.model.parse_spec` enforces, built from the
same models and field patterns. The committed file (`schema/job-spec.v1.json`) is generated, never
edited by hand, from the registered kinds (`daemon.handlers`); a test compares it with
`render_schema(params_models(), input_limits())`. Regenerate it after changing a spec or params model,
or registering a kind:

    make schema        # = python -m daemon schema > schema/job-spec.v1.json
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from .model import SPEC_VERSION, JobSpec

SCHEMA_ID = "urn:gpu-daemon:job-spec:v1"
"""`$id` of the published schema. A URN until the schema is served from a stable URL."""


def spec_json_schema(
    kinds: Mapping[str, type[BaseModel]], max_inputs: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """The whole spec as JSON Schema (draft 2020-12); params (and a kind's own cap on inputs, from
    `max_inputs`) are chosen per kind with if/then.

    Not expressible here, so checked only by `parse_spec`: unique input names, S3 key length in bytes
    (the schema counts characters), and position_lr_final ≤ position_lr_init.
    """
    schema = JobSpec[dict[str, Any]].model_json_schema()
    defs: dict[str, Any] = schema.pop("$defs", {})
    named: dict[str, type[BaseModel]] = {}
    branches = []
    for kind, params_model in sorted(kinds.items()):
        name = params_model.__name__
        if named.setdefault(name, params_model) is not params_model:
            raise ValueError(f"two params models are called {name}: rename one")
        params_schema = params_model.model_json_schema()
        defs.update(params_schema.pop("$defs", {}))
        defs[name] = params_schema
        then: dict[str, Any] = {"params": {"$ref": f"#/$defs/{name}"}}
        if max_inputs and kind in max_inputs:
            then["inputs"] = {"maxItems": max_inputs[kind]}
        branches.append(
            {
                "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
                "then": {"properties": then},
            }
        )
    properties = schema["properties"]
    properties["kind"] = {**properties["kind"], "enum": sorted(kinds)}
    properties["params"] = {"type": "object", "description": properties["params"]["description"]}
    return {
        **schema,
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": f"Job spec v{SPEC_VERSION}",
        "description": "A job for the GPU worker daemon: what to make (kind, params), from which inputs, "
        "where the results go and whom to call back. Strict: no unknown keys, no type coercion.",
        "allOf": branches,
        "$defs": defs,
    }


def render_schema(kinds: Mapping[str, type[BaseModel]], max_inputs: Mapping[str, int] | None = None) -> str:
    """The schema as stable text: sorted keys, two-space indent, ASCII only, trailing newline."""
    schema = spec_json_schema(kinds, max_inputs)
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=True) + "\n"
