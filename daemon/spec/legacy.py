"""Requests in the shapes of the workers this daemon replaces, translated at the edge into a v1 spec.

Existing clients switch to this daemon without changes. The shapes (seeds 000-002):

    RunPod wrapper   {"input": {...}} around either shape below (RunPod handed handlers job["input"])
    photos (000/001) project_id, image_urls, upload_url, webhook_url, params; 000 also top-level iterations
    video  (002)     video_url, scene_id, params {iterations, fps}
    model  (003)     jobId, sourceUrl, sourceFormat, options {dracoCompression, generateLOD, targetVertices}
                     (the BullMQ worker's job.data; mesh formats only so far)

`translate_legacy` returns a plain dict that still goes through `parse_spec`: this module only renames,
it never decides what is valid, except where an error would otherwise name a field the client never
sent (job ids, URLs). Unknown fields are refused, not dropped: a silently ignored option is a wrong job.

`salvage` is the lenient reading of the same shapes (and of v1 specs): from a request that failed
validation it keeps what is valid on its own, so the failure still reaches the row and the client.
This module is the only place that knows the legacy field names.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import SpecError
from .fields import UUID_PATTERN, did_you_mean, is_job_id, job_id_problem, json_type, url_problem
from .model import SPEC_VERSION, spec_error

PHOTO_FIELDS = ("project_id", "image_urls", "iterations", "upload_url", "webhook_url", "params")
"""Every field the photo workers (seeds 000 and 001) read."""

VIDEO_FIELDS = ("scene_id", "video_url", "params")
"""Every field the video worker (seed 002) read."""

MODEL_FIELDS = ("jobId", "sourceUrl", "sourceFormat", "options")
"""Every field of seed 003's model-processing job data."""

MESH_OPTIONS = {"dracoCompression": "draco_level", "targetVertices": "lod_targets", "generateLOD": None}
"""Seed 003's optimisation options and the mesh param each becomes (generateLOD: whether lod_targets
apply at all)."""

MESH_FORMATS = ("glb", "gltf", "obj", "ply", "stl", "fbx", "zip")
"""The sourceFormat values that are a mesh job (a .gltf or .obj with its files comes as a zip). PLY also
carries point clouds, but the model worker read it as a mesh, so it stays one here: a PLY point cloud
is sent as a v1 `pointcloud` spec."""

POINTCLOUD_FORMATS = ("las", "laz", "copc", "e57", "xyz", "csv", "txt")
"""The sourceFormat values that are a pointcloud job (seed 003's point-cloud pipeline)."""

ID_FIELDS = ("project_id", "scene_id", "jobId")
"""The legacy fields that carry the job id: the photo workers' project, the video worker's scene, the
model worker's jobId."""

MAIN_OUTPUT = "splat.ply"
"""The splat kind's main output, which the legacy `upload_url` receives."""

_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,8}")


def looks_legacy(raw: Mapping[str, Any]) -> bool:
    """True when `raw` is not a v1 spec but one of the legacy request shapes."""
    if "spec_version" in raw:
        return False
    return "input" in raw or any(field in raw for field in (*PHOTO_FIELDS, *VIDEO_FIELDS, *MODEL_FIELDS))


@dataclass(frozen=True)
class Salvaged:
    """What a request that failed validation still tells us, each part valid on its own."""

    job_id: str
    # The request's `kind` (at most 64 characters), "unknown" when it has none (every legacy shape).
    kind: str
    # An http(s) callback_url, or a legacy webhook_url.
    callback_url: str | None
    # "legacy" when the request named a webhook_url, as `translate_legacy` would have set it.
    callback_format: str
    # The legacy ids, echoed in callbacks as `translate_legacy` would have.
    metadata: dict[str, str]
    # The spec's owner_id when it is a UUID, in lower case: whose row a refusal may be reported on.
    owner_id: str | None = None


def salvage(raw: object) -> Salvaged | None:
    """From a request that failed validation (a v1 spec or a legacy shape, with or without the RunPod
    wrapper), the parts that are usable on their own, so the failure still reaches the row and the
    client. None without a valid job id: nothing can be reported without one."""
    if not isinstance(raw, Mapping):
        return None
    wrapped = raw.get("input")
    body: Mapping[str, Any] = wrapped if isinstance(wrapped, Mapping) else raw
    job_id = next((body.get(k) for k in ("job_id", *ID_FIELDS) if isinstance(body.get(k), str)), None)
    if not is_job_id(job_id):
        return None
    url = body.get("callback_url") or body.get("webhook_url")
    url = url if isinstance(url, str) and url.startswith(("https://", "http://")) else None
    callback_format = "legacy" if "webhook_url" in body else "standard"
    metadata = {k: body[k] for k in ID_FIELDS if isinstance(body.get(k), str)}
    kind = body["kind"][:64] if isinstance(body.get("kind"), str) else "unknown"
    owner = body.get("owner_id")
    owner = owner.lower() if isinstance(owner, str) and re.fullmatch(UUID_PATTERN, owner) else None
    return Salvaged(job_id, kind, url, callback_format, metadata, owner)


def translate_legacy(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A v1 spec dict (still to be checked by `parse_spec`) for a legacy request, or SpecError."""
    body, prefix = _unwrap(raw)
    if "spec_version" in body:
        return dict(body)  # a v1 spec sent through a RunPod-style client: only the wrapper was legacy
    if "video_url" in body and "image_urls" in body:
        raise SpecError(
            f"{prefix}video_url: give either image_urls or video_url, not both", code="conflicting_fields"
        )
    if "video_url" in body:
        return _translate_video(body, prefix)
    if "image_urls" in body:
        return _translate_photo(body, prefix)
    if "sourceUrl" in body or "jobId" in body:
        return _translate_model(body, prefix)
    _refuse_unknown(body, (*PHOTO_FIELDS, *VIDEO_FIELDS), prefix)  # a typo'd "image_url" says so
    raise SpecError(f"{prefix}image_urls: missing field (or video_url for a video job)", code="missing_field")


def _unwrap(raw: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """The request body, and the prefix that error paths need to name fields as the client sent them."""
    if "input" not in raw:
        return raw, ""
    # RunPod's /run also took "webhook", "policy" and "s3Config" beside "input"; we implement none.
    _refuse_unknown(raw, ("input",), "")
    body = raw["input"]
    if not isinstance(body, Mapping):
        raise SpecError(f"input: expected object, got {json_type(body)}", code="wrong_type")
    return body, "input."


def _translate_photo(body: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    _refuse_unknown(body, PHOTO_FIELDS, prefix)
    job_id = _job_id(body, "project_id", prefix)
    urls = _urls(body, "image_urls", prefix)
    params = _params(body, prefix)
    if "iterations" in body:  # seed 000 put it at the top level
        if "iterations" in params:
            raise SpecError(f"{prefix}iterations: also given as params.iterations", code="conflicting_fields")
        params["iterations"] = body["iterations"]
    spec = _spec(job_id, "splat", urls, _input_names(urls, "image", ".jpg"), params)
    spec["metadata"] = {"project_id": job_id}
    upload_url = _optional_url(body, "upload_url", prefix)
    if upload_url is not None:
        spec["output"] = {"presigned_put": {MAIN_OUTPUT: upload_url}}
    webhook_url = _optional_url(body, "webhook_url", prefix)
    if webhook_url is not None:
        spec["callback_url"] = webhook_url
        spec["callback_format"] = "legacy"
    return spec


def _translate_video(body: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    _refuse_unknown(body, VIDEO_FIELDS, prefix)
    job_id = _job_id(body, "scene_id", prefix)
    url = _required_url(body, "video_url", prefix, "must not be null")
    # The video worker uploaded to its own MASTER_SERVER_URL: here that is the daemon's configured storage.
    params = _params(body, prefix)
    # The video worker's one result was a zip (its `plt_url`): its clients get the bundle by default.
    params.setdefault("bundle", True)
    spec = _spec(job_id, "splat_video", [url], _input_names([url], "video", ".mp4"), params)
    spec["metadata"] = {"scene_id": job_id}
    return spec


def _translate_model(body: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    _refuse_unknown(body, MODEL_FIELDS, prefix)
    job_id = _job_id(body, "jobId", prefix)
    url = _required_url(body, "sourceUrl", prefix, "missing field")
    source_format = body.get("sourceFormat")
    if source_format is None:
        raise SpecError(f"{prefix}sourceFormat: missing field", code="missing_field")
    if not isinstance(source_format, str):
        what = json_type(source_format)
        raise SpecError(f"{prefix}sourceFormat: expected string, got {what}", code="wrong_type")
    extension = source_format.lower().lstrip(".")
    if extension in POINTCLOUD_FORMATS:
        return _translate_cloud(body, prefix, job_id, url, extension)
    if extension not in MESH_FORMATS:
        raise SpecError(
            f"{prefix}sourceFormat: {source_format!r} is not a format this worker takes (models: "
            f"{', '.join(MESH_FORMATS)}; point clouds: {', '.join(POINTCLOUD_FORMATS)})",
            code="unsupported_format",
        )
    params = _mesh_options(body.get("options"), f"{prefix}options")
    # The upload keeps its own name when that names a model format (a zipped glTF sent as "gltf" stays
    # a .zip); else it is given the declared one. The reader sniffs the bytes either way.
    stem, suffix = _split_extension(_input_names([url], "model", f".{extension}")[0])
    if suffix.lower().lstrip(".") not in MESH_FORMATS:
        suffix = f".{extension}"
    spec = _spec(job_id, "mesh", [url], [stem + suffix], params)
    spec["metadata"] = {"jobId": job_id}
    return spec


def _translate_cloud(
    body: Mapping[str, Any], prefix: str, job_id: str, url: str, extension: str
) -> dict[str, Any]:
    """Seed 003's point-cloud job: its pipeline (PDAL's outlier, ELM and ground filters, then tiles) is
    the pointcloud kind's default, and it took no options."""
    options = body.get("options")
    if options not in (None, {}):
        what = (
            f"fields {', '.join(map(str, options))}" if isinstance(options, Mapping) else json_type(options)
        )
        raise SpecError(
            f"{prefix}options: the point-cloud pipeline takes none (got {what})", code="unknown_field"
        )
    stem, suffix = _split_extension(_input_names([url], "cloud", f".{extension}")[0])
    if suffix.lower().lstrip(".") not in POINTCLOUD_FORMATS:
        suffix = f".{extension}"
    spec = _spec(job_id, "pointcloud", [url], [stem + suffix], {})
    spec["metadata"] = {"jobId": job_id}
    return spec


def _mesh_options(options: Any, path: str) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise SpecError(f"{path}: expected object, got {json_type(options)}", code="wrong_type")
    _refuse_unknown(options, tuple(MESH_OPTIONS), f"{path}.")
    params = {name: options[key] for key, name in MESH_OPTIONS.items() if name is not None and key in options}
    generate = options.get("generateLOD", True)
    if not isinstance(generate, bool):
        raise SpecError(f"{path}.generateLOD: expected boolean, got {json_type(generate)}", code="wrong_type")
    if not generate:
        params["lod_targets"] = []
    return params


def _spec(
    job_id: str, kind: str, urls: list[str], names: list[str], params: dict[str, Any]
) -> dict[str, Any]:
    return {
        "spec_version": SPEC_VERSION,
        "job_id": job_id,
        "kind": kind,
        "inputs": [{"url": url, "name": name} for url, name in zip(urls, names, strict=True)],
        "params": params,
    }


def _refuse_unknown(body: Mapping[str, Any], known: tuple[str, ...], prefix: str) -> None:
    problems = [
        ("unknown_field", f"{prefix}{key}: unknown field{did_you_mean(str(key), known)}")
        for key in body
        if key not in known
    ]
    if problems:
        raise spec_error(problems)


def _job_id(body: Mapping[str, Any], field: str, prefix: str) -> str:
    """The legacy id doubles as our job id, so it must be a valid one: refused here, named as sent."""
    value = body.get(field)
    if value is None:
        raise SpecError(f"{prefix}{field}: missing field (it becomes the job id)", code="missing_field")
    if not isinstance(value, str):
        raise SpecError(f"{prefix}{field}: expected string, got {json_type(value)}", code="wrong_type")
    problem = job_id_problem(value)
    if problem:
        raise SpecError(f"{prefix}{field}: cannot be the job id: {problem}", code="invalid_job_id")
    return value


def _urls(body: Mapping[str, Any], field: str, prefix: str) -> list[str]:
    urls = body[field]
    if not isinstance(urls, list):
        raise SpecError(f"{prefix}{field}: expected array, got {json_type(urls)}", code="wrong_type")
    if not urls:
        raise SpecError(f"{prefix}{field}: needs at least one URL", code="invalid_value")
    for index, url in enumerate(urls):
        _check_url(url, f"{prefix}{field}[{index}]")
    return urls


def _optional_url(body: Mapping[str, Any], field: str, prefix: str) -> str | None:
    url = body.get(field)
    if url is not None:
        _check_url(url, f"{prefix}{field}")
    return url


def _required_url(body: Mapping[str, Any], field: str, prefix: str, missing: str) -> str:
    url = _optional_url(body, field, prefix)
    if url is None:
        raise SpecError(f"{prefix}{field}: {missing}", code="missing_field")
    return url


def _check_url(url: Any, path: str) -> None:
    if not isinstance(url, str):
        raise SpecError(f"{path}: expected string, got {json_type(url)}", code="wrong_type")
    problem = url_problem(url)
    if problem:
        raise SpecError(f"{path}: {problem}", code="invalid_url")


def _params(body: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    params = body.get("params")
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise SpecError(f"{prefix}params: expected object, got {json_type(params)}", code="wrong_type")
    return dict(params)  # a copy: top-level iterations may be added to it


def _input_names(urls: list[str], stem: str, default_ext: str) -> list[str]:
    """Safe, unique file names from the URLs' basenames; `<stem>_0001<ext>` when nothing usable is left."""
    names: list[str] = []
    taken: set[str] = set()
    for number, url in enumerate(urls, start=1):
        basename = unquote(posixpath.basename(urlsplit(url).path))
        name = _safe_name(basename)
        if name is None:
            name = f"{stem}_{number:04d}{_split_extension(basename)[1] or default_ext}"
        names.append(_unique(name, taken))
    return names


def _safe_name(basename: str) -> str | None:
    # Leading dots and dashes go: no hidden files, nothing a tool could read as an option.
    stem, extension = _split_extension(_UNSAFE_NAME_CHARS.sub("_", basename).lstrip(".-"))
    if not re.search(r"[A-Za-z0-9]", stem):
        return None  # e.g. a non-Latin name that became all underscores: the fallback says more
    return stem[: 255 - len(extension)] + extension


def _unique(name: str, taken: set[str]) -> str:
    stem, extension = _split_extension(name)
    candidate, copy = name, 1
    while candidate in taken:
        copy += 1
        suffix = f"_{copy}{extension}"
        candidate = stem[: 255 - len(suffix)] + suffix
    taken.add(candidate)
    return candidate


def _split_extension(name: str) -> tuple[str, str]:
    """("IMG_1", ".jpg"); only a short alphanumeric suffix counts as an extension."""
    stem, extension = posixpath.splitext(name)
    return (stem, extension) if _EXTENSION.fullmatch(extension) else (name, "")
