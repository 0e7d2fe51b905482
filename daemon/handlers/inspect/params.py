"""Parameters of the "inspect" job kind: fetch the inputs and report what they are, without a GPU.

Pydantic only, like every kind's params.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from ..base import STRICT_PARAMS


class InspectParams(BaseModel):
    """What an inspect job looks at. Every field is optional."""

    model_config = STRICT_PARAMS

    max_inputs: int = Field(default=50, ge=1, le=2000)
    """Inspect at most this many inputs (the first ones in the spec's order)."""

    sha256: bool = True
    """Compute each input's SHA-256 (and compare it with the spec's, when given)."""
