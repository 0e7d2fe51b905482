"""Which objects of S3_BUCKET a job may name: tenant isolation, checked with the spec.

A spec's `inputs[].s3_key` and `output.s3_prefix` come from customers, through the web app. Unconfined,
one customer could name another's uploads, a job's checkpoints or its outputs as an input, or write
outputs over someone else's objects. So an input key must lie under one of `S3_INPUT_PREFIXES`, and an
output prefix must be `S3_PREFIX` itself (the default place, `<S3_PREFIX>/<job id>/`) or lie under one of
`S3_OUTPUT_PREFIXES`. A root may hold `{owner_id}` as a whole segment, filled with the spec's own owner,
so each customer has a folder of their own. Start-up refuses roots of different uses that overlap
(`daemon.config`), so an input is never a checkpoint or an output, and an output never lands on either.

A job's own id is not confined here: who owns an id is the ledger's atomic claim (`adapters/ledger.py`),
over the owner and the `spec_digest` below.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..config import OWNER_PLACEHOLDER, Settings
from ..errors import SpecError
from .fields import redact_url, show


@dataclass(frozen=True)
class Roots:
    """The key roots a job may read and write, from the settings (each ends with '/')."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    default_output: str

    @classmethod
    def of(cls, settings: Settings) -> Roots:
        return cls(settings.s3_input_prefixes, settings.s3_output_prefixes, settings.s3_prefix + "/")

    def for_owner(self, owner_id: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The input and output roots as this owner sees them; a root naming `{owner_id}` is closed
        to a spec without one."""
        return _expand(self.inputs, owner_id), _expand(self.outputs, owner_id)


def _expand(templates: tuple[str, ...], owner_id: str | None) -> tuple[str, ...]:
    expanded = []
    for template in templates:
        if OWNER_PLACEHOLDER in template:
            if owner_id is None:
                continue
            template = template.replace(OWNER_PLACEHOLDER, owner_id)
        expanded.append(template)
    return tuple(expanded)


def confine(spec: Any, roots: Roots) -> None:
    """Refuse (SpecError) a spec naming an input key or an output prefix outside its roots."""
    owner = owner_of(spec)
    inputs, outputs = roots.for_owner(owner)
    for index, item in enumerate(spec.inputs):
        key = item.s3_key
        if key is not None and not any(key.startswith(root) and len(key) > len(root) for root in inputs):
            raise SpecError(
                f"inputs[{index}].s3_key: {show(key)} is outside the input roots "
                f"{_listed(roots.inputs)}{_owner_note(roots.inputs, owner)}",
                code="s3_key_not_allowed",
            )
    prefix = getattr(spec.output, "s3_prefix", None) if spec.output is not None else None
    if prefix is None:
        return
    folder = prefix.strip("/") + "/"
    if folder == roots.default_output or any(folder.startswith(root) for root in outputs):
        return
    allowed = _listed((roots.default_output, *roots.outputs))
    raise SpecError(
        f"output.s3_prefix: {show(prefix)} is neither S3_PREFIX nor under an output root: "
        f"{allowed}{_owner_note(roots.outputs, owner)}",
        code="s3_prefix_not_allowed",
    )


def owner_of(spec: Any) -> str | None:
    """The spec's owner as one spelling (a UUID's letters in lower case): for roots and the ledger."""
    return str(spec.owner_id).lower() if spec.owner_id else None


def _listed(roots: tuple[str, ...]) -> str:
    return ", ".join(roots) if roots else "(none configured)"


def _owner_note(templates: tuple[str, ...], owner: str | None) -> str:
    if not any(OWNER_PLACEHOLDER in template for template in templates):
        return ""
    return f" ({OWNER_PLACEHOLDER} = {owner})" if owner else f" ({OWNER_PLACEHOLDER} roots need an owner_id)"


def spec_digest(spec: Any) -> str:
    """What makes two specs the same job, as a SHA-256: its kind, owner, inputs and destination. A
    re-run may change its params, priority, callback or metadata, and re-sign its presigned URLs (their
    tokens are left out); another set of inputs or another destination under the same id is another job."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            return redact_url(value)
        return value

    dumped = spec.model_dump(mode="json", exclude_none=True, include={"kind", "inputs", "output"})
    dumped["owner_id"] = owner_of(spec)
    text = json.dumps(plain(dumped), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
