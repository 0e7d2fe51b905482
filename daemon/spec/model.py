"""The job contract: one typed, versioned spec, validated before any work starts.

A spec arrives as JSON (from the web app through Redis, or from `rq enqueue`), is checked here in full,
and only then touches a path, an S3 key, a Redis key or the network. Everything is strict: no coercion
("7000" is not an int), no unknown keys, no NaN. `parse_spec` turns every problem into one `SpecError`
whose `code` is the first problem's and whose message lists up to five, each naming its JSON path.

Only syntax is checked here. Whether a URL's host resolves to a global address (SSRF) is decided at
download time, on every redirect, because DNS can change between now and then (DESIGN.md §6).

`spec_json_schema` publishes the same contract as JSON Schema (draft 2020-12) for the web app;
`daemon/schema_file.py` renders the committed copy.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Generic, Literal, TypeVar, get_args, get_origin
from urllib.parse import urlsplit

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

from ..errors import SpecError

SPEC_VERSION = 1
"""The only spec version this daemon reads; a new version is a new schema file, never a silent change."""

SCHEMA_ID = "urn:gpu-daemon:job-spec:v1"
"""`$id` of the published schema. A URN until the schema is served from a stable URL."""

MAX_SPEC_BYTES = 1 << 20
"""1 MiB: 2,000 presigned URLs fit several times over; anything bigger is a client bug or an attack."""

MAX_INPUTS = 2000
"""More photos than this buys no quality and costs hours of SfM matching."""

MAX_URL_CHARS = 2048
"""Longer URLs are refused by many servers and proxies; presigned S3/R2 URLs stay well under it."""

MAX_S3_KEY_BYTES = 1024
"""S3's own limit for an object key (UTF-8 bytes)."""

MAX_METADATA_ENTRIES = 32
"""Metadata is echoed in every callback: keep it small."""

MAX_REPORTED_PROBLEMS = 5
"""How many problems one SpecError message lists; the rest are counted."""

PRIORITIES = ("high", "default", "low")
"""Job priorities, highest first: each is an rq queue of that name, and a worker serves them in this
order (DAEMON_QUEUES)."""

Priority = Literal["high", "default", "low"]

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"
"""Job ids become S3 keys, file names and Redis keys: rq's own id alphabet, capped at 128 characters.
The `jobs` table's check constraint uses the same pattern."""

NAME_PATTERN = r"^(?!\.{1,2}$)(?!-)[A-Za-z0-9._-]{1,255}$"
"""A file name safe on every file system and as a command-line argument (no leading '-')."""

_NAME_SEGMENT = r"(?!\.{1,2}(?:/|$))(?!-)[A-Za-z0-9._-]{1,255}"
OUTPUT_NAME_PATTERN = rf"^{_NAME_SEGMENT}(?:/{_NAME_SEGMENT})*$"
S3_KEY_PATTERN = r"^(?!/)(?!.*//)(?!.*/$)(?!(?:.*/)?\.{1,2}(?:/|$))[^\\\x00-\x1f\x7f-\x9f]+$"
URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s\x00-\x1f\x7f/?#@\\]+(?:[/?#][^\s\x00-\x1f\x7f\\]*)?$"
SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"
CONTENT_TYPE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$"
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
"""The patterns above are also the JSON Schema's; Python applies them with `re.fullmatch`, so a
trailing newline can never slip past `$`."""

# Characters no URL or S3 key may carry: whitespace and controls (Python's urlsplit silently drops tabs
# and newlines, so "http://a\n.internal" would be checked as one host and fetched as another), and
# backslashes (browsers and some HTTP clients read them as '/', so the host we check is not the host hit).
_URL_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f\\]")
_KEY_UNSAFE = re.compile(r"[\\\x00-\x1f\x7f-\x9f]")
_HOSTNAME = re.compile(r"(?:[A-Za-z0-9-]+\.)*[A-Za-z0-9-]+\.?")  # a DNS name or an IPv4 address

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
"""Every code a SpecError from this module or `daemon.legacy` carries. Our own validators raise
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


# --- Field checks: plain functions returning a problem or None, shared with `daemon.legacy`. ---------
# Messages never echo a URL: presigned URLs are credentials, and error messages end up in logs,
# progress rows and callbacks.


def job_id_problem(value: str) -> str | None:
    if re.fullmatch(JOB_ID_PATTERN, value):
        return None
    if not value:
        return "job id must not be empty"
    if len(value) > 128:
        return f"job id is {len(value)} characters long, at most 128"
    rule = "letters, digits, '_' and '-', starting with a letter or digit"
    return f"{show(value)} is not a valid job id: use {rule}"


def url_problem(value: str) -> str | None:
    if len(value) > MAX_URL_CHARS:
        return f"URL is {len(value)} characters long, at most {MAX_URL_CHARS}"
    if _URL_UNSAFE.search(value):
        return "URL contains whitespace, control characters or a backslash"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in ("http", "https"):
        return f"URL scheme must be http or https, got {show(parts.scheme[:20])}"
    if "@" in parts.netloc:
        return "URL must not contain credentials (user:password@)"
    if not parts.hostname or not (_HOSTNAME.fullmatch(parts.hostname) or _is_ipv6(parts.hostname)):
        return "URL has no valid host"
    return None


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def s3_key_problem(value: str) -> str | None:
    size = len(value.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= MAX_S3_KEY_BYTES:
        return f"S3 key is {size} bytes long, must be 1-{MAX_S3_KEY_BYTES}"
    if value.startswith("/"):
        return f"S3 key {show(value)} must not start with '/'"
    if _KEY_UNSAFE.search(value):
        return f"S3 key {show(value)} contains a control character or a backslash"
    if any(segment in ("", ".", "..") for segment in value.split("/")):
        return f"S3 key {show(value)} has an empty, '.' or '..' segment"
    return None


def name_problem(value: str) -> str | None:
    if re.fullmatch(NAME_PATTERN, value):
        return None
    rule = "1-255 of A-Z a-z 0-9 . _ -, not '.' or '..', not starting with '-'"
    return f"{show(value)} is not a safe file name: {rule}"


def output_name_problem(value: str) -> str | None:
    if len(value) <= MAX_S3_KEY_BYTES and re.fullmatch(OUTPUT_NAME_PATTERN, value):
        return None
    return f"{show(value)} is not a safe output name: safe file names separated by '/'"


def _pattern_problem(pattern: str, what: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if re.fullmatch(pattern, value) else f"{show(value)} is not {what}"

    return check


def _checked(check: Callable[[str], str | None], code: str) -> AfterValidator:
    """Run `check` after the strict str check; a failure carries our own error code."""

    def validate(value: str) -> str:
        problem = check(value)
        if problem:
            # The problem goes in as context, never as the template: user text may contain braces.
            raise PydanticCustomError(code, "{problem}", {"problem": problem})
        return value

    return AfterValidator(validate)


def _string_schema(**schema: Any) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", **schema})


def _check_version(value: int) -> int:
    if value != SPEC_VERSION:
        raise PydanticCustomError(
            "unsupported_spec_version",
            "spec version {version} is not supported (this daemon reads version {supported})",
            {"version": value, "supported": SPEC_VERSION},
        )
    return value


_url_schema = {"pattern": URL_PATTERN, "maxLength": MAX_URL_CHARS, "format": "uri"}
SpecVersion = Annotated[int, AfterValidator(_check_version), WithJsonSchema({"type": "integer", "const": 1})]
JobId = Annotated[
    str, _checked(job_id_problem, "invalid_job_id"), _string_schema(pattern=JOB_ID_PATTERN, maxLength=128)
]
Url = Annotated[str, _checked(url_problem, "invalid_url"), _string_schema(**_url_schema)]
S3Key = Annotated[
    str,
    _checked(s3_key_problem, "invalid_s3_key"),
    _string_schema(pattern=S3_KEY_PATTERN, minLength=1, maxLength=MAX_S3_KEY_BYTES),
]
FileName = Annotated[str, _checked(name_problem, "invalid_name"), _string_schema(pattern=NAME_PATTERN)]
OutputName = Annotated[
    str,
    _checked(output_name_problem, "invalid_name"),
    _string_schema(pattern=OUTPUT_NAME_PATTERN, maxLength=MAX_S3_KEY_BYTES),
]
Sha256 = Annotated[
    str,
    _checked(_pattern_problem(SHA256_PATTERN, "a hex SHA-256"), "invalid_value"),
    _string_schema(pattern=SHA256_PATTERN),
]
ContentType = Annotated[
    str,
    _checked(_pattern_problem(CONTENT_TYPE_PATTERN, "a media type"), "invalid_value"),
    _string_schema(pattern=CONTENT_TYPE_PATTERN),
]
OwnerId = Annotated[
    str,
    _checked(_pattern_problem(UUID_PATTERN, "a UUID"), "invalid_value"),
    _string_schema(pattern=UUID_PATTERN),
]
PresignedPut = Annotated[
    dict[OutputName, Url],
    Field(min_length=1, max_length=32),
    WithJsonSchema(
        {
            "type": "object",
            "minProperties": 1,
            "maxProperties": 32,
            "propertyNames": {"pattern": OUTPUT_NAME_PATTERN, "maxLength": MAX_S3_KEY_BYTES},
            "additionalProperties": {"type": "string", **_url_schema},
        }
    ),
]
Metadata = Annotated[
    dict[Annotated[str, Field(min_length=1, max_length=128)], Annotated[str, Field(max_length=1024)]],
    Field(max_length=MAX_METADATA_ENTRIES),
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": MAX_METADATA_ENTRIES,
            "propertyNames": {"minLength": 1, "maxLength": 128},
            "additionalProperties": {"type": "string", "maxLength": 1024},
        }
    ),
]


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
    """Expected media type, e.g. image/jpeg or video/mp4."""

    @model_validator(mode="after")
    def _one_source(self) -> InputRef:
        _exactly_one(self, "url", "s3_key")
        return self


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


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


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


def json_path(loc: tuple[int | str, ...]) -> str:
    """('inputs', 2, 'urll') → 'inputs[2].urll'; odd keys are quoted: metadata["a b"]."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "[key]":  # pydantic's marker for "the dict key itself is invalid"
            path += " (key)"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            path += f".{part}" if path else part
        else:
            path += f"[{show(part)}]"
    return path or "spec"


def json_type(value: Any) -> str:
    """The JSON name of a value's type, as a client would call it."""
    if value is None:
        return "null"
    for python_type, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
                              (list, "array"), (dict, "object")):  # fmt: skip
        if isinstance(value, python_type):
            return name
    return type(value).__name__


def show(value: Any, limit: int = 40) -> str:
    """A short JSON rendering of a user value for messages (escapes NUL and friends)."""
    text = json.dumps(value, ensure_ascii=True, default=str)
    return text if len(text) <= limit else text[: limit - 2] + '…"'


# --- JSON Schema -----------------------------------------------------------------------------------


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


def spec_to_json(spec: JobSpec[Any]) -> dict[str, Any]:
    """The normalised spec as plain JSON, as it is put on the queue."""
    return spec.model_dump(mode="json", exclude_none=True)
