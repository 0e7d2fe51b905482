"""The job contract: one typed, versioned spec, validated before any work starts.

A spec arrives as JSON (from the web app through Redis, or from `rq enqueue`), is checked here in full,
and only then touches a path, an S3 key, a Redis key or the network. Everything is strict: no coercion
("7000" is not an int), no unknown keys, no NaN. `parse_spec` turns every problem into one `SpecError`
whose `code` is the first problem's and whose message lists up to five, each naming its JSON path.

Only syntax is checked here. Whether a URL's host resolves to a global address (SSRF) is decided at
download time, on every redirect, because DNS can change between now and then (DESIGN.md §6).

Each field's pattern, check and type is in `daemon.spec.fields`; `daemon.spec.schema` publishes the
same contract as JSON Schema (draft 2020-12) for the web app and renders the committed copy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Generic, Literal, TypeVar, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from ..config import DEFAULT_QUEUES
from ..errors import SpecError
from .fields import (
    ContentType,
    FileName,
    JobId,
    Metadata,
    OwnerId,
    PresignedPut,
    S3Key,
    Sha256,
    Url,
    did_you_mean,
    json_path,
    json_type,
    redact_url,
    show,
)

SPEC_VERSION = 1
"""The only spec version this daemon reads; a new version is a new schema file, never a silent change."""

MAX_SPEC_BYTES = 1 << 20
"""1 MiB: 2,000 presigned URLs fit several times over; anything bigger is a client bug or an attack."""

MAX_INPUTS = 2000
"""More photos than this buys no quality and costs hours of SfM matching."""

MAX_REPORTED_PROBLEMS = 5
"""How many problems one SpecError message lists; the rest are counted."""

PRIORITIES = DEFAULT_QUEUES
"""Job priorities, highest first: each is an rq queue of that name, and a worker serves them in this
order (DAEMON_QUEUES)."""

Priority = Literal["high", "default", "low"]

SPEC_ERROR_CODES = frozenset(
    {
        "not_json",
        "spec_too_large",
        "unsupported_spec_version",
        "invalid_job_id",
        "unknown_kind",
        "unknown_field",
        "missing_field",
        "wrong_type",
        "conflicting_fields",
        "invalid_url",
        "invalid_s3_key",
        "invalid_name",
        "duplicate_input_name",
        "invalid_params",
        "invalid_value",
    }
)
"""Every code a SpecError from this module or `daemon.spec.legacy` carries. Our own validators raise
pydantic errors whose type already is one of these."""

# The JSON names of the types pydantic's strict "*_type" errors expected.
_EXPECTED = {
    "string_type": "string",
    "int_type": "integer",
    "float_type": "number",
    "bool_type": "boolean",
    "list_type": "array",
    "dict_type": "object",
    "model_type": "object",
}

# The one table from pydantic's error types to our codes. Any other type is a value out of range or
# not allowed: `invalid_params` under "params", `invalid_value` elsewhere.
_CODE_BY_ERROR_TYPE = {
    "extra_forbidden": "unknown_field",
    "missing": "missing_field",
    **dict.fromkeys(_EXPECTED, "wrong_type"),
}


def _check_version(value: int) -> int:
    if value != SPEC_VERSION:
        raise PydanticCustomError(
            "unsupported_spec_version",
            "spec version {version} is not supported (this daemon reads version {supported})",
            {"version": value, "supported": SPEC_VERSION},
        )
    return value


SpecVersion = Annotated[int, AfterValidator(_check_version), WithJsonSchema({"type": "integer", "const": 1})]


# --- Models ----------------------------------------------------------------------------------------

STRICT = ConfigDict(strict=True, extra="forbid", frozen=True, use_attribute_docstrings=True)


def _exactly_one(model: BaseModel, first: str, second: str) -> None:
    given = [name for name in (first, second) if getattr(model, name) is not None]
    if len(given) == 2:
        raise PydanticCustomError(
            "conflicting_fields", "give either '{a}' or '{b}', not both", {"a": first, "b": second}
        )
    if not given:
        raise PydanticCustomError("missing_field", "needs one of '{a}' or '{b}'", {"a": first, "b": second})


def _one_of_schema(first: str, second: str) -> dict[str, Any]:
    # A null counts as absent in Python, so each branch requires a non-null value under its key.
    return {
        "oneOf": [
            {"required": [key], "properties": {key: {"not": {"type": "null"}}}} for key in (first, second)
        ]
    }


class InputRef(BaseModel):
    """One input file: fetched from an http(s) URL or read from the daemon's S3 bucket."""

    model_config = STRICT | ConfigDict(json_schema_extra=_one_of_schema("url", "s3_key"))

    url: Url | None = None
    """http(s) URL to download (presigned URLs welcome). Exactly one of url / s3_key."""

    s3_key: S3Key | None = None
    """Key in the daemon's configured bucket. Exactly one of url / s3_key."""

    name: FileName | None = None
    """File name in the job's working directory; unique within the spec."""

    sha256: Sha256 | None = None
    """Expected SHA-256 of the content (hex); the download is refused when it differs."""

    content_type: ContentType | None = None
    """Expected media type, e.g. image/jpeg or video/mp4; enforced on the file's first bytes."""

    @model_validator(mode="after")
    def _one_source(self) -> InputRef:
        _exactly_one(self, "url", "s3_key")
        return self

    def __repr_args__(self) -> Any:
        # repr() ends up in tracebacks and Sentry: a presigned URL's query string is a credential.
        for name, value in super().__repr_args__():
            yield name, (redact_url(value) if name == "url" and value else value)

    @property
    def label(self) -> str:
        """How messages, rows and logs name this input: its name, else its URL redacted (a presigned
        URL's query string is a credential), else its S3 key."""
        return self.name or (redact_url(self.url) if self.url else str(self.s3_key))


class Output(BaseModel):
    """Where results go, instead of the daemon's configured storage."""

    model_config = STRICT | ConfigDict(json_schema_extra=_one_of_schema("s3_prefix", "presigned_put"))

    s3_prefix: S3Key | None = None
    """Key prefix in the daemon's bucket; outputs land under <s3_prefix>/<job_id>/."""

    presigned_put: PresignedPut | None = None
    """Output name → presigned PUT URL, e.g. {"splat.ply": "https://…"}."""

    @model_validator(mode="after")
    def _one_target(self) -> Output:
        _exactly_one(self, "s3_prefix", "presigned_put")
        return self

    def __repr_args__(self) -> Any:
        # As InputRef's: presigned PUT URLs are credentials until they expire.
        for name, value in super().__repr_args__():
            if name == "presigned_put" and value:
                value = {output: redact_url(url) for output, url in value.items()}
            yield name, value


P = TypeVar("P")


class JobSpec(BaseModel, Generic[P]):
    """A validated job. Build it with `parse_spec`: `params` is then the kind's params model."""

    model_config = STRICT

    spec_version: SpecVersion
    """Version of this contract; always 1 here."""

    job_id: JobId
    """Caller-chosen id, used in S3 keys, paths and Redis keys: 1-128 of A-Z a-z 0-9 _ -."""

    kind: str
    """What to make; selects the params model."""

    priority: Priority = "default"
    """Queue to run in."""

    inputs: Annotated[list[InputRef], Field(min_length=1, max_length=MAX_INPUTS)]
    """The files to process, 1-2000."""

    output: Output | None = None
    """Where results go; omitted means the daemon's configured storage."""

    callback_url: Url | None = None
    """Webhook called on completion and failure (Standard Webhooks signature)."""

    callback_format: Literal["standard", "legacy"] = "standard"
    """Callback payload shape; "legacy" is what the replaced RunPod workers sent."""

    owner_id: OwnerId | None = None
    """User id (UUID) written to the progress row, for row-level security."""

    metadata: Metadata = Field(default_factory=dict)
    """Free string → string pairs (at most 32), echoed back in callbacks."""

    params: P = Field(default_factory=dict, validate_default=True)
    """Kind-specific parameters; omitted means the kind's defaults."""

    def __repr_args__(self) -> Any:
        # A callback URL may carry a token in its query string, as a presigned input URL does.
        for name, value in super().__repr_args__():
            yield name, (redact_url(value) if name == "callback_url" and value else value)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str, info: ValidationInfo) -> str:
        kinds = (info.context or {}).get("kinds")
        if kinds is not None and kind not in kinds:
            raise PydanticCustomError(
                "unknown_kind",
                "unknown kind {kind} (known kinds: {known})",
                {"kind": show(kind), "known": ", ".join(sorted(kinds))},
            )
        return kind

    @field_validator("inputs")
    @classmethod
    def _unique_names(cls, inputs: list[InputRef]) -> list[InputRef]:
        first_seen: dict[str, int] = {}
        for index, item in enumerate(inputs):
            if item.name is None:
                continue
            if item.name in first_seen:
                raise PydanticCustomError(
                    "duplicate_input_name",
                    "duplicate input name {name} (inputs[{j}] and inputs[{i}])",
                    {"i": index, "j": first_seen[item.name], "name": show(item.name)},
                )
            first_seen[item.name] = index
        return inputs


# --- Parsing ---------------------------------------------------------------------------------------


def load_spec_json(raw: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    """The raw spec as a plain JSON object, or SpecError `spec_too_large` / `not_json`.

    A Mapping goes through a JSON round trip too, so every caller sees exactly what a JSON client could
    send: no tuples, no NaN, no objects that only Python can hold.
    """
    if isinstance(raw, Mapping):
        encoded = _dump(raw)
    else:
        encoded = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if len(encoded) > MAX_SPEC_BYTES:
        raise SpecError(f"spec is {len(encoded)} bytes, at most {MAX_SPEC_BYTES}", code="spec_too_large")
    data = _load(encoded)
    if not isinstance(data, dict):
        raise SpecError(f"spec must be a JSON object, got {json_type(data)}", code="not_json")
    _dump(data)  # a lone surrogate escape (\ud800) parses, but Postgres and S3 would refuse it later
    return data


def _dump(data: Any) -> bytes:
    try:
        return json.dumps(data, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        raise SpecError(f"spec is not plain JSON: {exc}", code="not_json") from exc


def _load(encoded: bytes) -> Any:
    def refuse_constant(name: str) -> None:
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(encoded, parse_constant=refuse_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise SpecError(f"spec is not valid JSON: {exc}", code="not_json") from exc


def parse_spec(raw: str | bytes | Mapping[str, Any], *, kinds: Mapping[str, type[BaseModel]]) -> JobSpec[Any]:
    """Validate a raw job spec completely, or raise SpecError (first problem's code, up to five listed)."""
    data = load_spec_json(raw)
    kind = data.get("kind")
    params_model = kinds.get(kind) if isinstance(kind, str) else None
    # An unknown or missing kind still validates everything else, with params as a plain object,
    # so the client hears about all its problems at once.
    model: type[JobSpec[Any]] = JobSpec[dict[str, Any]]
    if params_model is not None:
        model = JobSpec[params_model]  # type: ignore[valid-type]  # chosen at run time; pydantic caches it
    try:
        return model.model_validate(data, context={"kinds": kinds})
    except ValidationError as exc:
        raise spec_error([_problem(error, model) for error in exc.errors(include_url=False)]) from exc


def spec_error(problems: list[tuple[str, str]]) -> SpecError:
    """One SpecError from (code, message) problems: the first one's code, up to five messages."""
    message = "; ".join(text for _, text in problems[:MAX_REPORTED_PROBLEMS])
    if len(problems) > MAX_REPORTED_PROBLEMS:
        message += f" (and {len(problems) - MAX_REPORTED_PROBLEMS} more)"
    return SpecError(message, code=problems[0][0])


def _problem(error: ErrorDetails, model: type[BaseModel]) -> tuple[str, str]:
    kind, loc = error["type"], error["loc"]
    where = json_path(loc)
    if kind in SPEC_ERROR_CODES:  # one of our validators: the message is already written
        return kind, f"{where}: {error['msg']}"
    code = _CODE_BY_ERROR_TYPE.get(kind) or ("invalid_params" if loc[:1] == ("params",) else "invalid_value")
    if code == "unknown_field":
        return code, f"{where}: unknown field{_suggestion(model, loc)}"
    if code == "missing_field":
        return code, f"{where}: missing field"
    if code == "wrong_type":
        return code, f"{where}: expected {_EXPECTED[kind]}, got {json_type(error['input'])}"
    # pydantic's own wording ("Input should be greater than or equal to 100"), made to read after a path.
    text = error["msg"].removeprefix("Input ")
    value = error["input"]
    got = f", got {show(value)}" if value is None or isinstance(value, str | int | float) else ""
    return code, f"{where}: {text[:1].lower()}{text[1:]}{got}"


def _suggestion(model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    owner = _model_at(model, loc[:-1])
    if owner is None or not isinstance(loc[-1], str):
        return ""
    return did_you_mean(loc[-1], owner.model_fields)


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class that validates the object at `loc` (list indexes are skipped)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if current else None
        current = _find_model(field.annotation) if field else None
    return current


def _find_model(annotation: Any) -> type[BaseModel] | None:
    if get_origin(annotation) is None and isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _find_model(arg)
        if found:
            return found
    return None


def spec_to_json(spec: JobSpec[Any]) -> dict[str, Any]:
    """The normalised spec as plain JSON, as it is put on the queue."""
    return spec.model_dump(mode="json", exclude_none=True)
