"""Legacy request shapes (daemon/spec/legacy.py): the replaced workers' clients keep working unchanged."""

from __future__ import annotations

import json
from typing import Any

import pytest

from daemon.attempt.report import Identity
from daemon.errors import SpecError
from daemon.handlers.splat.params import SplatParams
from daemon.handlers.splat.params_video import SplatVideoParams
from daemon.spec.legacy import Salvaged, looks_legacy, salvage, translate_legacy
from daemon.spec.model import JobSpec, parse_spec
from tests.test_spec import KINDS

# The request examples exactly as the seed documents print them.
SEED_000 = """
{
  "input": {
    "project_id": "project-uuid",
    "image_urls": [
      "https://r2-bucket.com/photos/1.jpg",
      "https://r2-bucket.com/photos/2.jpg",
      "..."
    ],
    "iterations": 7000,
    "upload_url": "https://r2-bucket.com/models/output.ply?presigned=...",
    "webhook_url": "https://your-worker.workers.dev/api/webhook/job-id"
  }
}
"""

SEED_001 = """
{
  "image_urls": [
    "https://your-bucket.com/image1.jpg",
    "https://your-bucket.com/image2.jpg",
    "https://your-bucket.com/image3.jpg"
  ],
  "upload_url": "https://your-bucket.com/output.ply?presigned-params",
  "webhook_url": "https://your-api.com/webhook/job123",
  "project_id": "unique-project-id",
  "params": {
    "iterations": 7000,
    "position_lr_init": 0.00016,
    "position_lr_final": 0.0000016,
    "feature_lr": 0.0025,
    "opacity_lr": 0.05,
    "scaling_lr": 0.005,
    "rotation_lr": 0.001,
    "sh_degree": 3,
    "densify_grad_threshold": 0.0002
  }
}
"""

SEED_002 = """
{
    "input": {
        "video_url": "https://example.com/video.mp4",
        "scene_id": "my-scene-123",
        "params": {
            "iterations": 30000,
            "fps": 2
        }
    }
}
"""


def seed(text: str) -> dict[str, Any]:
    return json.loads(text)


def accept(raw: dict[str, Any]) -> JobSpec[Any]:
    """The daemon's edge: translate a legacy request, then validate it like any spec."""
    assert looks_legacy(raw)
    return parse_spec(translate_legacy(raw), kinds=KINDS)


def refused(raw: dict[str, Any]) -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse_spec(translate_legacy(raw), kinds=KINDS)
    return caught.value


def seed_000_without_placeholder() -> dict[str, Any]:
    raw = seed(SEED_000)
    raw["input"]["image_urls"].remove("...")
    return raw


# --- The seeds' own examples ------------------------------------------------------------------------


def test_seed_000_example_is_refused_for_its_placeholder_url():
    # Given seed 000's example verbatim, whose URL list ends in a literal "..." placeholder
    raw = seed(SEED_000)
    # When translated, Then the placeholder is refused as a URL, named as the client sent it
    error = refused(raw)
    assert error.code == "invalid_url"
    assert error.message.startswith("input.image_urls[2]: URL scheme must be http or https")


def test_seed_000_request_translates():
    # Given seed 000's example without the placeholder (a RunPod-wrapped photo request)
    raw = seed_000_without_placeholder()
    # When translated and parsed
    spec = accept(raw)
    # Then it is a splat job named after the project, with its top-level iterations as a param
    assert (spec.job_id, spec.kind) == ("project-uuid", "splat")
    assert [(i.url, i.name) for i in spec.inputs] == [
        ("https://r2-bucket.com/photos/1.jpg", "1.jpg"),
        ("https://r2-bucket.com/photos/2.jpg", "2.jpg"),
    ]
    assert isinstance(spec.params, SplatParams) and spec.params.steps == 7000
    assert spec.output is not None
    assert spec.output.presigned_put == {"splat.ply": "https://r2-bucket.com/models/output.ply?presigned=..."}
    assert spec.callback_url == "https://your-worker.workers.dev/api/webhook/job-id"
    assert spec.callback_format == "legacy"
    assert spec.metadata == {"project_id": "project-uuid"}


def test_seed_001_request_translates_with_params_unchanged():
    # Given seed 001's example verbatim (no RunPod wrapper)
    raw = seed(SEED_001)
    # When translated
    translated = translate_legacy(raw)
    # Then the training params pass through untouched and the whole request parses
    assert translated["params"] == raw["params"]
    spec = parse_spec(translated, kinds=KINDS)
    assert (spec.job_id, spec.kind, spec.callback_format) == ("unique-project-id", "splat", "legacy")
    assert [i.name for i in spec.inputs] == ["image1.jpg", "image2.jpg", "image3.jpg"]
    assert spec.params == SplatParams(iterations=7000)  # 001's documented values are exactly our defaults
    assert spec.output is not None and spec.output.presigned_put is not None
    assert spec.output.presigned_put["splat.ply"] == raw["upload_url"]


def test_seed_002_video_request_translates():
    # Given seed 002's example verbatim (a RunPod-wrapped video request)
    raw = seed(SEED_002)
    # When translated and parsed
    spec = accept(raw)
    # Then it is a splat_video job named after the scene, with one input and the daemon's storage
    assert (spec.job_id, spec.kind) == ("my-scene-123", "splat_video")
    assert [(i.url, i.name) for i in spec.inputs] == [("https://example.com/video.mp4", "video.mp4")]
    assert isinstance(spec.params, SplatVideoParams)
    assert (spec.params.steps, spec.params.fps) == (30000, 2.0)
    # and, as that worker returned one zip, the bundle is on
    assert spec.params.bundle is True
    assert spec.metadata == {"scene_id": "my-scene-123"}
    assert spec.output is None and spec.callback_url is None


@pytest.mark.parametrize("text", [SEED_001, SEED_002])
def test_wrapper_is_optional_for_every_shape(text):
    # Given a request with and without RunPod's {"input": ...} wrapper
    body = seed(text).get("input", seed(text))
    # When both are translated, Then they give the same spec
    assert translate_legacy({"input": body}) == translate_legacy(body)


def test_a_v1_spec_is_not_legacy():
    spec = {"spec_version": 1, "job_id": "a", "kind": "splat", "inputs": [{"s3_key": "a.jpg"}]}
    assert not looks_legacy(spec)
    assert looks_legacy(seed(SEED_000)) and looks_legacy(seed(SEED_001)) and looks_legacy(seed(SEED_002))


def test_a_wrapped_v1_spec_is_only_unwrapped():
    spec = {"spec_version": 1, "job_id": "a", "kind": "splat", "inputs": [{"s3_key": "a.jpg"}]}
    assert translate_legacy({"input": spec}) == spec


# --- Input names ------------------------------------------------------------------------------------


def test_input_names_are_safe_and_unique():
    # Given URLs whose basenames repeat, carry unsafe characters, or are missing
    urls = [
        "https://a.example/day1/IMG_0001.JPG?X-Amz-Signature=1",
        "https://a.example/day2/IMG_0001.JPG",
        "https://a.example/my%20photo%20(2).jpg",
        "https://a.example/%D1%84%D0%BE%D1%82%D0%BE.png",
        "https://a.example/photos/",
        "https://a.example/-rf.jpg",
        "https://a.example/..",
    ]
    raw = {"project_id": "p1", "image_urls": urls}
    # When translated
    spec = parse_spec(translate_legacy(raw), kinds=KINDS)
    # Then every input has a distinct safe name, the fallback numbering the image's position
    assert [i.name for i in spec.inputs] == [
        "IMG_0001.JPG",
        "IMG_0001_2.JPG",
        "my_photo__2_.jpg",
        "image_0004.png",
        "image_0005.jpg",
        "rf.jpg",
        "image_0007.jpg",
    ]


# --- Refused legacy requests ------------------------------------------------------------------------


def test_project_id_that_is_no_job_id_is_refused_by_name():
    raw = seed(SEED_001) | {"project_id": "my project/2"}
    error = refused(raw)
    assert error.code == "invalid_job_id"
    assert error.message.startswith('project_id: cannot be the job id: "my project/2" is not a valid job id')


def test_scene_id_that_is_no_job_id_is_refused_by_name():
    raw = seed(SEED_002)
    raw["input"]["scene_id"] = "scene 1"
    error = refused(raw)
    assert (error.code, error.message.split(":")[0]) == ("invalid_job_id", "input.scene_id")


@pytest.mark.parametrize(
    ("raw", "code", "fragment"),
    [
        ({"image_urls": ["https://a.example/1.jpg"]}, "missing_field", "project_id: missing field"),
        (
            {"input": {"video_url": "https://a.example/v.mp4"}},
            "missing_field",
            "input.scene_id: missing field",
        ),
        (
            {"project_id": "p", "image_url": ["https://a.example/1.jpg"]},
            "unknown_field",
            "did you mean 'image_urls'?",
        ),
        ({"project_id": "p"}, "missing_field", "image_urls: missing field"),
        (
            {"project_id": 7, "image_urls": ["https://a.example/1.jpg"]},
            "wrong_type",
            "project_id: expected string",
        ),
        (
            {"project_id": "p", "image_urls": "https://a.example/1.jpg"},
            "wrong_type",
            "image_urls: expected array",
        ),
        ({"project_id": "p", "image_urls": []}, "invalid_value", "image_urls: needs at least one URL"),
        ({"project_id": "p", "image_urls": [7]}, "wrong_type", "image_urls[0]: expected string, got integer"),
        (
            {"project_id": "p", "image_urls": ["file:///etc/passwd"]},
            "invalid_url",
            "image_urls[0]: URL scheme",
        ),
        (
            {
                "project_id": "p",
                "image_urls": ["https://a.example/1.jpg"],
                "upload_url": "https://u:p@a.example/",
            },
            "invalid_url",
            "upload_url: URL must not contain credentials",
        ),
        (
            {
                "project_id": "p",
                "image_urls": ["https://a.example/1.jpg"],
                "iterations": 7000,
                "params": {"iterations": 3000},
            },
            "conflicting_fields",
            "iterations: also given as params.iterations",
        ),
        (
            {
                "scene_id": "s",
                "video_url": "https://a.example/v.mp4",
                "image_urls": ["https://a.example/1.jpg"],
            },
            "conflicting_fields",
            "give either image_urls or video_url",
        ),
        (
            {"input": {"scene_id": "s", "video_url": "https://a.example/v.mp4"}, "webhook": "https://h/"},
            "unknown_field",
            "webhook: unknown field",
        ),
        ({"input": ["https://a.example/1.jpg"]}, "wrong_type", "input: expected object, got array"),
        (
            {"scene_id": "s", "video_url": "https://a.example/v.mp4", "params": []},
            "wrong_type",
            "params: expected object",
        ),
        (
            {"scene_id": "s", "video_url": "https://a.example/v.mp4", "fps": 2},
            "unknown_field",
            "fps: unknown field",
        ),
    ],
)
def test_malformed_legacy_request_is_refused(raw, code, fragment):
    # Given a legacy request with one problem
    # When translated, Then it is refused with a specific code, naming the field as the client sent it
    with pytest.raises(SpecError) as caught:
        translate_legacy(raw)
    assert caught.value.code == code
    assert fragment in caught.value.message


@pytest.mark.parametrize(
    ("params", "code", "fragment"),
    [
        ({"densify_until_iter": 15000}, "unknown_field", "params.densify_until_iter: unknown field"),
        ({"sh_degree": 4}, "invalid_params", "params.sh_degree: should be less than or equal to 3"),
        ({"iterations": "7000"}, "wrong_type", "params.iterations: expected integer, got string"),
    ],
)
def test_legacy_params_are_validated_by_the_spec(params, code, fragment):
    # Given a legacy photo request with bad training params
    raw = seed(SEED_001) | {"params": params}
    # When translated and parsed, Then the spec's params model refuses them
    error = refused(raw)
    assert (error.code, fragment in error.message) == (code, True)


def test_video_params_out_of_range_are_refused():
    raw = seed(SEED_002)
    raw["input"]["params"]["fps"] = 30
    error = refused(raw)
    assert error.code == "invalid_params" and "params.fps" in error.message


@pytest.mark.parametrize("raw", [seed_000_without_placeholder(), seed(SEED_001), seed(SEED_002)])
def test_translated_requests_match_the_published_schema(raw):
    # Given the JSON Schema the web app validates against (rendered for every kind legacy clients use,
    # including the splat kinds whose handlers are not registered yet)
    jsonschema = pytest.importorskip("jsonschema")
    from daemon.spec.schema import render_schema
    from tests.test_spec import KINDS

    schema = json.loads(render_schema(KINDS))
    # When a translated legacy request is checked against it, Then it passes
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(translate_legacy(raw))) == []


# --- Salvaging a refused request ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "salvaged"),
    [
        (
            {"spec_version": 1, "job_id": "job-1", "kind": "splat", "callback_url": "https://a.example/h"},
            Salvaged("job-1", "splat", "https://a.example/h", "standard", {}),
        ),
        (
            {"input": {"project_id": "p-1", "image_urls": "x", "webhook_url": "https://w.example/h"}},
            Salvaged("p-1", "unknown", "https://w.example/h", "legacy", {"project_id": "p-1"}),
        ),
        (
            {"scene_id": "s-1", "video_url": 5, "webhook_url": "ftp://w.example/h"},
            Salvaged("s-1", "unknown", None, "legacy", {"scene_id": "s-1"}),
        ),
        (
            {"job_id": 7, "project_id": "p-2", "kind": "k" * 100},
            Salvaged("p-2", "k" * 64, None, "standard", {"project_id": "p-2"}),
        ),
    ],
)
def test_a_refused_request_keeps_what_is_valid_on_its_own(raw, salvaged):
    # Given a request that fails validation, When salvaged, Then its id, callback and ids survive
    assert salvage(raw) == salvaged
    # and the failure report is built from exactly that
    identity = Identity.salvage(raw)
    assert identity is not None
    assert (identity.job_id, identity.kind, identity.callback_url) == (
        salvaged.job_id,
        salvaged.kind,
        salvaged.callback_url,
    )
    assert (identity.callback_format, identity.metadata) == (salvaged.callback_format, salvaged.metadata)


@pytest.mark.parametrize(
    "raw",
    [
        ["job-1"],
        {"kind": "splat"},
        {"job_id": "job-1\n", "callback_url": "https://a.example/h"},
        {"input": {"project_id": "job-1\n"}},
        {"scene_id": "../x"},
        {"job_id": "a b", "project_id": "p-1"},  # the first id given is the one that counts
    ],
)
def test_a_request_without_a_valid_job_id_is_not_salvaged(raw):
    assert salvage(raw) is None
    assert Identity.salvage(raw) is None


# --- Seed 003: the model worker's BullMQ job data -----------------------------------------------------

SEED_003_OPTIONS = {"dracoCompression": 7, "generateLOD": True, "targetVertices": [1000000, 100000, 10000]}
"""optimizeGLB's options with its own defaults, as its callers pass them."""


def accept_mesh(raw: dict[str, Any]) -> JobSpec[Any]:
    from daemon.handlers.mesh.params import MeshParams

    assert looks_legacy(raw)
    return parse_spec(translate_legacy(raw), kinds={**KINDS, "mesh": MeshParams})


def test_seed_003_model_job_translates_to_a_mesh_job():
    # Given the job data the model worker's queue carried, with optimizeGLB's options
    raw = {"jobId": "job-42", "sourceUrl": "https://cdn.example/u/scan.glb?sig=1", "sourceFormat": "glb",
           "options": SEED_003_OPTIONS}  # fmt: skip
    # When translated and parsed
    spec = accept_mesh(raw)
    # Then it is a mesh job under that id, its options as our params
    assert (spec.job_id, spec.kind, spec.metadata) == ("job-42", "mesh", {"jobId": "job-42"})
    assert [(i.url, i.name) for i in spec.inputs] == [("https://cdn.example/u/scan.glb?sig=1", "scan.glb")]
    assert spec.params.draco_level == 7 and spec.params.lod_targets == [1e6, 1e5, 1e4]
    assert spec.params.compression == "draco"


@pytest.mark.parametrize(
    ("url", "source_format", "name"),
    [
        ("https://a.example/download", "obj", "download.obj"),  # the declared format names it
        ("https://a.example/files/chair.zip", "gltf", "chair.zip"),  # a zipped glTF stays a zip
        ("https://a.example/m/part.STL", "stl", "part.STL"),
        ("https://a.example/m/scan.bin", "PLY", "scan.ply"),
    ],
)
def test_seed_003_upload_names_carry_a_model_format(url, source_format, name):
    spec = accept_mesh({"jobId": "j", "sourceUrl": url, "sourceFormat": source_format})
    assert [i.name for i in spec.inputs] == [name]
    assert spec.params.lod_targets == [1e6, 1e5, 1e4]  # no options: our defaults, the seed's own


def test_seed_003_without_lods_keeps_only_the_preview():
    spec = accept_mesh({"jobId": "j", "sourceUrl": "https://a.example/m.glb", "sourceFormat": "glb",
                        "options": {"generateLOD": False, "dracoCompression": 10}})  # fmt: skip
    assert spec.params.lod_targets == [] and spec.params.draco_level == 10


@pytest.mark.parametrize(
    ("raw", "code", "fragment"),
    [
        ({"jobId": "j", "sourceFormat": "glb"}, "missing_field", "sourceUrl: missing field"),
        ({"sourceUrl": "https://a.example/m.glb", "sourceFormat": "glb"}, "missing_field", "jobId: missing"),
        ({"jobId": "j", "sourceUrl": "https://a.example/m.glb"}, "missing_field", "sourceFormat: missing"),
        (
            {"jobId": "j", "sourceUrl": "https://a.example/m.glb", "sourceFormat": 3},
            "wrong_type",
            "sourceFormat: expected string, got integer",
        ),
        (
            {"jobId": "j", "sourceUrl": "https://a.example/plan.dwg", "sourceFormat": "dwg"},
            "unsupported_format",
            "sourceFormat: 'dwg' is not a format this worker takes (models: glb, gltf",
        ),
        (
            {"jobId": "j", "sourceUrl": "https://a.example/s.laz", "sourceFormat": "laz",
             "options": {"dracoCompression": 7}},
            "unknown_field",
            "options: the point-cloud pipeline takes none (got fields dracoCompression)",
        ),
        (
            {"jobId": "j", "sourceUrl": "file:///etc/passwd", "sourceFormat": "glb"},
            "invalid_url",
            "sourceUrl: URL scheme",
        ),
        (
            {"jobId": "j", "sourceUrl": "https://a.example/m.glb", "sourceFormat": "glb",
             "options": {"dracoCompresion": 7}},
            "unknown_field",
            "options.dracoCompresion: unknown field (did you mean 'dracoCompression'?)",
        ),
        (
            {"jobId": "j", "sourceUrl": "https://a.example/m.glb", "sourceFormat": "glb",
             "options": {"generateLOD": "no"}},
            "wrong_type",
            "options.generateLOD: expected boolean, got string",
        ),
        (
            {"jobId": "j", "sourceUrl": "https://a.example/m.glb", "sourceFormat": "glb", "priority": 1},
            "unknown_field",
            "priority: unknown field",
        ),
        (
            {"jobId": "a b", "sourceUrl": "https://a.example/m.glb", "sourceFormat": "glb"},
            "invalid_job_id",
            "jobId: cannot be the job id",
        ),
    ],
)  # fmt: skip
def test_malformed_seed_003_job_is_refused_by_name(raw, code, fragment):
    with pytest.raises(SpecError) as caught:
        translate_legacy(raw)
    assert caught.value.code == code and fragment in caught.value.message, caught.value.message


@pytest.mark.parametrize(
    ("url", "source_format", "name"),
    [
        ("https://cdn.example/u/site.laz?sig=1", "laz", "site.laz"),
        ("https://cdn.example/u/scan", "e57", "scan.e57"),
        ("https://cdn.example/u/points.txt", "CSV", "points.txt"),
    ],
)
def test_seed_003_point_cloud_job_translates_to_a_pointcloud_job(url, source_format, name):
    from daemon.handlers.pointcloud.params import PointcloudParams

    raw = {"jobId": "site-7", "sourceUrl": url, "sourceFormat": source_format}
    assert looks_legacy(raw)
    spec = parse_spec(translate_legacy(raw), kinds={**KINDS, "pointcloud": PointcloudParams})
    assert spec.kind == "pointcloud" and spec.job_id == "site-7"
    assert [i.name for i in spec.inputs] == [name] and spec.metadata == {"jobId": "site-7"}
    assert spec.params.outlier is not None and spec.params.ground == "csf"  # the seed's pipeline


def test_seed_003_options_are_checked_by_the_mesh_params():
    raw = {"jobId": "j", "sourceUrl": "https://a.example/m.glb", "sourceFormat": "glb",
           "options": {"dracoCompression": 11}}  # fmt: skip
    with pytest.raises(SpecError) as caught:
        accept_mesh(raw)
    assert caught.value.code == "invalid_params" and "params.draco_level" in caught.value.message


def test_a_refused_seed_003_job_is_salvaged_under_its_job_id():
    assert salvage({"jobId": "job-7", "sourceUrl": 5}) == Salvaged("job-7", "unknown", None, "standard",
                                                                   {"jobId": "job-7"})  # fmt: skip
