"""The fields of a job spec: their patterns, their checks and their pydantic types.

Each check is a plain function returning a problem (a message) or None, shared by the models
(`daemon.spec.model`) and the legacy translation (`daemon.spec.legacy`), so a field is refused with the
same words whichever shape the request came in. The patterns are also the published JSON Schema's
(`daemon.spec.schema`).

Messages never echo a URL: presigned URLs are credentials, and error messages end up in logs,
progress rows and callbacks.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Callable, Iterable
from typing import Annotated, Any, TypeGuard
from urllib.parse import urlsplit, urlunsplit

from pydantic import AfterValidator, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

MAX_URL_CHARS = 2048
"""Longer URLs are refused by many servers and proxies; presigned S3/R2 URLs stay well under it."""

MAX_S3_KEY_BYTES = 1024
"""S3's own limit for an object key (UTF-8 bytes)."""

MAX_METADATA_ENTRIES = 32
"""Metadata is echoed in every callback: keep it small."""

JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
"""Job ids become S3 keys, file names and Redis keys: rq's own id alphabet, capped at 128 characters.
The `jobs` table's check constraint uses the same pattern. The one spelling of it: the spec, storage
and the failure report all apply it with `fullmatch` (`is_job_id`); a `.match` with `$` would accept
a trailing newline."""

JOB_ID_PATTERN = f"^{JOB_ID_RE.pattern}$"
"""The same, anchored, for the JSON Schema (whose patterns are searched, not matched)."""

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
REDACTED_MAX_CHARS = 300
"""Longest URL we put in a message; a hostile URL could otherwise flood the log line."""

_URL_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f\\]")
_KEY_UNSAFE = re.compile(r"[\\\x00-\x1f\x7f-\x9f]")
_HOSTNAME = re.compile(r"(?:[A-Za-z0-9-]+\.)*[A-Za-z0-9-]+\.?")  # a DNS name or an IPv4 address


# --- Checks: plain functions returning a problem or None ----------------------------------------------


def is_job_id(value: object) -> TypeGuard[str]:
    """True when `value` is a string that is a whole job id (see JOB_ID_RE)."""
    return isinstance(value, str) and JOB_ID_RE.fullmatch(value) is not None


def job_id_problem(value: str) -> str | None:
    if is_job_id(value):
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


# --- Types: a strict str, its check (with our error code) and its JSON Schema ------------------------


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


_url_schema = {"pattern": URL_PATTERN, "maxLength": MAX_URL_CHARS, "format": "uri"}
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


# --- Messages: how a value or a place in the spec is named in an error ------------------------------


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


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


def redact_url(url: object) -> str:
    """`url` without credentials, query string or fragment (presigned and webhook URLs carry tokens
    there), control characters escaped (they could forge log lines), length capped: safe for logs,
    errors and stored URIs. The daemon's one redaction: input labels, downloads, uploads, callbacks."""
    try:
        parts = urlsplit(str(url))
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "<malformed url>"
    host = f"[{host}]" if ":" in host else host  # an IPv6 literal
    netloc = host if port is None else f"{host}:{port}"
    text = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    text = "".join(c if c.isprintable() else f"%{ord(c):02X}" for c in text)
    return text[:REDACTED_MAX_CHARS]
