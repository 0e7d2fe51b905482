"""The job contract (daemon/spec/): what a valid spec yields, and how each malformed one is refused."""

from __future__ import annotations

import copy
import json
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from daemon.errors import SpecError
from daemon.handlers import input_limits, params_models
from daemon.handlers.inspect.params import InspectParams
from daemon.handlers.splat.params import SplatParams
from daemon.handlers.splat.params_video import SplatVideoParams
from daemon.spec.fields import JOB_ID_PATTERN, JOB_ID_RE, is_job_id
from daemon.spec.model import PRIORITIES, JobSpec, Priority, parse_spec
from daemon.spec.schema import render_schema, spec_json_schema

KINDS: dict[str, type[BaseModel]] = {
    "splat": SplatParams,
    "splat_video": SplatVideoParams,
    "inspect": InspectParams,
}
SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schema" / "job-spec.v1.json"
OWNER = "6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b"


def minimal_spec() -> dict[str, Any]:
    return {
        "spec_version": 1,
        "job_id": "scan-2026-11-25_a1",
        "kind": "splat",
        "inputs": [{"url": "https://cdn.example.com/u1/IMG_0001.jpg"}],
    }


def full_spec() -> dict[str, Any]:
    return {
        "spec_version": 1,
        "job_id": "scan-2026-11-25_a1",
        "kind": "splat",
        "priority": "high",
        "inputs": [
            {"url": "https://cdn.example.com/u1/IMG_0001.jpg?X-Amz-Signature=ab%2F", "name": "IMG_0001.jpg"},
            {"s3_key": "uploads/u1/IMG_0002.jpg", "name": "IMG_0002.jpg", "sha256": "ab" * 32},
            {"s3_key": "uploads/u1/IMG_0003.jpg", "content_type": "image/jpeg"},
        ],
        "output": {
            "presigned_put": {
                "splat.ply": "https://r2.example.com/out.ply?sig=1",
                "previews/a.png": "http://h/p",
            }
        },
        "callback_url": "https://app.example.com/api/webhooks/jobs",
        "callback_format": "standard",
        "owner_id": OWNER,
        "metadata": {"project_id": "p-42", "note": "first scan"},
        "params": {
            "preset": "high",
            "iterations": 12000,
            "sh_degree": 2,
            "feature_lr": 1,
            "max_image_size": 2048,
        },
    }


def refused(raw: Any) -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse_spec(raw, kinds=KINDS)
    return caught.value


# --- Valid specs ------------------------------------------------------------------------------------


def test_the_spec_priorities_are_the_queues_a_worker_serves_by_default():
    # The spec's Literal spells the names for the type checker and the schema; they must be the queues
    # (and their order) the daemon serves when DAEMON_QUEUES is unset.
    assert typing.get_args(Priority) == PRIORITIES


def test_full_spec_yields_typed_values():
    # Given a spec that uses every field
    raw = full_spec()
    # When it is parsed
    spec = parse_spec(raw, kinds=KINDS)
    # Then every value arrives typed, and params is the kind's model
    assert isinstance(spec, JobSpec)
    assert (spec.job_id, spec.kind, spec.priority, spec.owner_id) == (
        "scan-2026-11-25_a1",
        "splat",
        "high",
        OWNER,
    )
    assert [i.name for i in spec.inputs] == ["IMG_0001.jpg", "IMG_0002.jpg", None]
    assert spec.inputs[1].s3_key == "uploads/u1/IMG_0002.jpg" and spec.inputs[1].url is None
    assert spec.output is not None and spec.output.presigned_put is not None
    assert set(spec.output.presigned_put) == {"splat.ply", "previews/a.png"}
    assert spec.metadata == {"project_id": "p-42", "note": "first scan"}
    assert isinstance(spec.params, SplatParams)
    assert spec.params.steps == 12000  # iterations overrides the preset
    assert spec.params.feature_lr == 1.0 and isinstance(spec.params.feature_lr, float)


def test_minimal_spec_gets_defaults():
    # Given only the required fields
    # When parsed
    spec = parse_spec(minimal_spec(), kinds=KINDS)
    # Then everything else takes its documented default
    assert spec.priority == "default"
    assert spec.output is None and spec.callback_url is None and spec.owner_id is None
    assert spec.callback_format == "standard"
    assert spec.metadata == {}
    assert spec.params == SplatParams()
    assert spec.params.preset == "medium" and spec.params.steps == 7000
    assert (spec.params.max_image_size, spec.params.min_images) == (1600, 5)


@pytest.mark.parametrize("encode", [json.dumps, lambda d: json.dumps(d).encode(), lambda d: d])
def test_str_bytes_and_mapping_give_the_same_spec(encode: Callable[[dict[str, Any]], Any]):
    # Given the same spec as text, bytes and a dict
    # When each is parsed
    spec = parse_spec(encode(full_spec()), kinds=KINDS)
    # Then the results are equal
    assert spec == parse_spec(full_spec(), kinds=KINDS)


def test_params_are_chosen_by_kind():
    # Given a video job and an inspect job
    video = {**minimal_spec(), "kind": "splat_video", "params": {"fps": 2, "preset": "best"}}
    inspect = {**minimal_spec(), "kind": "inspect", "params": {"max_inputs": 3}}
    # When parsed
    video_spec, inspect_spec = parse_spec(video, kinds=KINDS), parse_spec(inspect, kinds=KINDS)
    # Then each carries its own params model
    assert isinstance(video_spec.params, SplatVideoParams)
    assert (video_spec.params.fps, video_spec.params.steps) == (2.0, 30000)
    assert inspect_spec.params == InspectParams(max_inputs=3, sha256=True)


def test_video_params_take_fps_or_frame_count_not_both():
    # Given video specs choosing frames by count, and by count and an explicit fps
    by_count = {**minimal_spec(), "kind": "splat_video", "params": {"frame_count": 40}}
    both = {**minimal_spec(), "kind": "splat_video", "params": {"frame_count": 40, "fps": 3}}
    # When parsed, Then the count alone is accepted with the photo job's params inherited
    params = parse_spec(by_count, kinds=KINDS).params
    assert (params.frame_count, params.fps, params.bundle, params.max_gaussians) == (
        40,
        2.0,
        False,
        2_000_000,
    )
    # and both together are refused, naming the conflict
    with pytest.raises(SpecError) as refused:
        parse_spec(both, kinds=KINDS)
    assert refused.value.code == "conflicting_fields"
    assert "give either fps or frame_count" in refused.value.message


def test_a_video_job_takes_exactly_one_input():
    from daemon.handlers import parse_job

    # Given a splat_video spec with two inputs
    raw = {**minimal_spec(), "kind": "splat_video", "inputs": [{"s3_key": "a.mp4"}, {"s3_key": "b.mp4"}]}
    # When parsed as the worker and enqueue parse it, Then it is refused before any work
    with pytest.raises(SpecError) as refused:
        parse_job(raw)
    assert refused.value.code == "too_many_inputs"
    assert "takes one video, got 2" in refused.value.message
    # while one input is fine
    assert parse_job({**raw, "inputs": raw["inputs"][:1]}).kind == "splat_video"


def test_spec_is_immutable():
    # Given a parsed spec
    spec = parse_spec(minimal_spec(), kinds=KINDS)
    # When code tries to change it, Then it cannot
    with pytest.raises(Exception, match="frozen"):
        spec.job_id = "other"


def test_parsing_does_not_touch_the_callers_dict():
    # Given a caller's dict
    raw = full_spec()
    before = copy.deepcopy(raw)
    # When parsed
    parse_spec(raw, kinds=KINDS)
    # Then it is unchanged
    assert raw == before


def test_parsed_spec_round_trips_through_json():
    # Given a parsed spec, serialised as the daemon would store or enqueue it (nulls included)
    spec = parse_spec(full_spec(), kinds=KINDS)
    dumped = spec.model_dump(mode="json")
    # When the serialised form is parsed again
    again = parse_spec(json.dumps(dumped), kinds=KINDS)
    # Then nothing changed
    assert again == spec


# --- Malformed specs --------------------------------------------------------------------------------


def put(path: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A mutation of the full spec: set the value at a dotted path ("inputs.0.url")."""

    def mutate(spec: dict[str, Any]) -> dict[str, Any]:
        *parents, last = path.split(".")
        target: Any = spec
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
        return spec

    return mutate


def drop(field: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda spec: {k: v for k, v in spec.items() if k != field}


def raw_text(text: str | bytes) -> Callable[[dict[str, Any]], str | bytes]:
    return lambda _spec: text


HUGE = json.dumps({**full_spec(), "metadata": {"k": "x" * (1 << 20)}})

# (id, mutation of full_spec(),
#     expected code, message fragment, whether the JSON Schema refuses it too)
# fmt: off
MALFORMED: list[tuple[str, Callable[[dict[str, Any]], Any], str, str, bool]] = [
    ("unknown top-level field", put("prioriti", "high"),
        "unknown_field", "prioriti: unknown field (did you mean 'priority'?)", True),
    ("unknown nested field", put("inputs.2", {"urll": "https://a.example/x.jpg"}),
        "unknown_field", "inputs[2].urll: unknown field (did you mean 'url'?)", True),
    ("job_id with ../", put("job_id", "../etc"),
        "invalid_job_id", 'job_id: "../etc" is not a valid job id', True),
    ("job_id with /", put("job_id", "a/b"),
        "invalid_job_id", 'job_id: "a/b" is not a valid job id', True),
    ("job_id with a space", put("job_id", "my scan"),
        "invalid_job_id", '"my scan" is not a valid job id', True),
    ("job_id with NUL", put("job_id", "a\x00b"),
        "invalid_job_id", '"a\\u0000b" is not a valid job id', True),
    ("job_id with trailing newline", put("job_id", "abc\n"),
        "invalid_job_id", '"abc\\n" is not a valid job id', False),
    ("job_id too long", put("job_id", "a" * 129),
        "invalid_job_id", "job id is 129 characters long, at most 128", True),
    ("job_id empty", put("job_id", ""),
        "invalid_job_id", "job_id: job id must not be empty", True),
    ("job_id missing", drop("job_id"),
        "missing_field", "job_id: missing field", True),
    ("unknown kind", put("kind", "mesh"),
        "unknown_kind", 'kind: unknown kind "mesh" (known kinds: inspect, splat, splat_video)', True),
    ("spec_version 2", put("spec_version", 2),
        "unsupported_spec_version", "spec_version: spec version 2 is not supported", True),
    ("spec_version as string", put("spec_version", "1"),
        "wrong_type", "spec_version: expected integer, got string", True),
    ("string where int expected", put("params.iterations", "7000"),
        "wrong_type", "params.iterations: expected integer, got string", True),
    ("float where int expected", put("params.iterations", 7000.0),
        "wrong_type", "params.iterations: expected integer, got number", False),
    ("bool where int expected", put("params.sh_degree", True),
        "wrong_type", "params.sh_degree: expected integer, got boolean", True),
    ("javascript: URL", put("inputs.0.url", "javascript:alert(1)"),
        "invalid_url", "inputs[0].url: URL scheme must be http or https, got \"javascript\"", True),
    ("file: URL", put("inputs.0.url", "file:///etc/passwd"),
        "invalid_url", "URL scheme must be http or https, got \"file\"", True),
    ("URL with credentials", put("inputs.0.url", "https://user:pw@cdn.example.com/a.jpg"),
        "invalid_url", "inputs[0].url: URL must not contain credentials", True),
    ("URL without host", put("inputs.0.url", "https:///a.jpg"),
        "invalid_url", "URL has no valid host", True),
    ("URL with newline in host", put("inputs.0.url", "http://a.example\n.internal/x"),
        "invalid_url", "whitespace, control characters or a backslash", True),
    ("URL with backslash", put("callback_url", "https://good.example\\@evil.example/"),
        "invalid_url", "callback_url: URL contains", True),
    ("URL too long", put("inputs.0.url", "https://a.example/" + "x" * 2048),
        "invalid_url", "URL is 2066 characters long, at most 2048", True),
    ("s3_key with .. segment", put("inputs.1.s3_key", "uploads/../secrets/x"),
        "invalid_s3_key", "S3 key \"uploads/../secrets/x\" has an empty, '.' or '..' segment", True),
    ("s3_key with leading /", put("inputs.1.s3_key", "/uploads/x.jpg"),
        "invalid_s3_key", "S3 key \"/uploads/x.jpg\" must not start with '/'", True),
    ("s3_key with backslash", put("inputs.1.s3_key", "uploads\\x.jpg"),
        "invalid_s3_key", "control character or a backslash", True),
    ("s3_prefix with empty segment", put("output", {"s3_prefix": "customer-a//jobs"}),
        "invalid_s3_key", "output.s3_prefix: S3 key", True),
    ("input with url and s3_key", put("inputs.0.s3_key", "uploads/a.jpg"),
        "conflicting_fields", "inputs[0]: give either 'url' or 's3_key', not both", True),
    ("input with neither", put("inputs.0", {"name": "a.jpg"}),
        "missing_field", "inputs[0]: needs one of 'url' or 's3_key'", True),
    ("output with both", put("output.s3_prefix", "customer-a/jobs"),
        "conflicting_fields", "output: give either 's3_prefix' or 'presigned_put', not both", True),
    ("duplicate input names", put("inputs.2.name", "IMG_0001.jpg"),
        "duplicate_input_name", 'duplicate input name "IMG_0001.jpg" (inputs[0] and inputs[2])', False),
    ("input name ..", put("inputs.0.name", ".."),
        "invalid_name", 'inputs[0].name: ".." is not a safe file name', True),
    ("input name with /", put("inputs.0.name", "a/b.jpg"),
        "invalid_name", '"a/b.jpg" is not a safe file name', True),
    ("output name escaping", put("output.presigned_put", {"../splat.ply": "https://a.example/x"}),
        "invalid_name", 'output.presigned_put["../splat.ply"] (key)', True),
    ("no inputs", put("inputs", []),
        "invalid_value", "inputs: list should have at least 1 item", True),
    ("too many inputs", put("inputs", [{"s3_key": f"u/{i}.jpg"} for i in range(2001)]),
        "invalid_value", "inputs: list should have at most 2000 items", True),
    ("priority not allowed", put("priority", "urgent"),
        "invalid_value", "priority: should be 'high', 'default' or 'low', got \"urgent\"", True),
    ("owner_id not a UUID", put("owner_id", "me"),
        "invalid_value", 'owner_id: "me" is not a UUID', True),
    ("params out of range", put("params.iterations", 50),
        "invalid_params", "params.iterations: should be greater than or equal to 100, got 50", True),
    ("params lr above 1", put("params.opacity_lr", 2.5),
        "invalid_params", "params.opacity_lr: should be less than or equal to 1", True),
    ("params lr rising", put("params.position_lr_final", 0.5),
        "invalid_params", "position_lr_final (0.5) must not exceed position_lr_init", False),
    ("params unknown field", put("params.iteration", 7000),
        "unknown_field", "params.iteration: unknown field (did you mean 'iterations'?)", True),
    ("params of another kind", put("params.fps", 2),
        "unknown_field", "params.fps: unknown field", True),
    ("metadata non-string value", put("metadata.project_id", 42),
        "wrong_type", "metadata.project_id: expected string, got integer", True),
    ("metadata too big", put("metadata", {f"k{i}": "v" for i in range(33)}),
        "invalid_value", "metadata: dictionary should have at most 32 items", True),
    ("not JSON", raw_text("{spec_version: 1"),
        "not_json", "spec is not valid JSON", False),
    ("JSON array", raw_text("[1, 2]"),
        "not_json", "spec must be a JSON object, got array", False),
    ("JSON NaN", raw_text('{"spec_version": NaN}'),
        "not_json", "NaN is not valid JSON", False),
    ("lone surrogate", raw_text('{"job_id": "\\ud800"}'),
        "not_json", "spec is not plain JSON", False),
    ("not UTF-8", raw_text(b'{"job_id": "\xff"}'),
        "not_json", "spec is not valid JSON", False),
    ("too large", raw_text(HUGE),
        "spec_too_large", "at most 1048576", False),
]
# fmt: on


@pytest.mark.parametrize(
    ("mutate", "code", "fragment"), [c[1:4] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_spec_is_refused_with_its_code(mutate, code, fragment):
    # Given a full spec with one problem
    raw = mutate(full_spec())
    # When it is parsed
    error = refused(raw)
    # Then the error names that problem, with its specific code
    assert error.code == code, error.message
    assert fragment in error.message
    assert error.retryable is False


def test_error_messages_never_echo_urls():
    # Given a presigned URL (a credential) that fails validation
    secret = "ftp://bucket.example/key?X-Amz-Signature=SECRET"
    # When refused
    error = refused(put("inputs.0.url", secret)(full_spec()))
    # Then the message does not contain it
    assert "SECRET" not in error.message


def test_several_problems_report_the_first_code_and_list_five():
    # Given a spec with seven problems
    raw = full_spec()
    raw.update(spec_version=2, job_id="a b", kind="mesh", priority="urgent", owner_id="me", extra=1, more=2)
    # When parsed
    error = refused(raw)
    # Then the code is the first problem's, and the message lists five and counts the rest
    assert error.code == "unsupported_spec_version"
    assert error.message.startswith("spec_version: spec version 2 is not supported")
    for fragment in ['job_id: "a b"', "kind: unknown kind", "priority:", "owner_id:", "(and 2 more)"]:
        assert fragment in error.message
    assert str(error).startswith("unsupported_spec_version: ")


def test_unknown_kind_still_reports_the_other_problems():
    # Given an unknown kind and a bad URL
    raw = put("inputs.0.url", "file:///etc/passwd")(put("kind", "mesh")(full_spec()))
    # When parsed
    error = refused(raw)
    # Then both are reported, the kind first
    assert error.code == "unknown_kind"
    assert "inputs[0].url: URL scheme" in error.message


@pytest.mark.parametrize("job_id", ["job-1\n", "job-1\r", " job-1", "job-1 "])
def test_a_job_id_with_a_trailing_newline_is_refused(job_id):
    # Given a job id that a `.match` with `$` would accept
    # When checked, or parsed as a spec's job id, Then it is refused
    assert not is_job_id(job_id)
    assert refused(put("job_id", job_id)(minimal_spec())).code == "invalid_job_id"


def test_the_schema_job_id_pattern_is_the_checked_one():
    assert is_job_id("job-1") and is_job_id("a" * 128) and not is_job_id("a" * 129) and not is_job_id(7)
    assert f"^{JOB_ID_RE.pattern}$" == JOB_ID_PATTERN
    assert spec_json_schema(KINDS)["properties"]["job_id"]["pattern"] == JOB_ID_PATTERN


def test_non_json_python_values_are_refused():
    # Given a dict that no JSON client could have sent
    raw = {**minimal_spec(), "metadata": {"when": object()}}
    # When parsed, Then it is refused as not JSON
    assert refused(raw).code == "not_json"


# --- JSON Schema ------------------------------------------------------------------------------------


def test_committed_schema_file_is_up_to_date():
    # Given the committed schema file and the models
    # When the schema is rendered again
    # Then they are identical (regenerate: make schema)
    assert SCHEMA_FILE.read_text() == render_schema(params_models(), input_limits())


def test_schema_render_is_stable():
    assert render_schema(KINDS) == render_schema(dict(reversed(list(KINDS.items()))))
    assert render_schema(KINDS).endswith("}\n")


def test_schema_describes_the_contract():
    schema = spec_json_schema(KINDS)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["title"] and schema["description"]
    assert schema["properties"]["kind"]["enum"] == ["inspect", "splat", "splat_video"]
    assert {"SplatParams", "SplatVideoParams", "InspectParams", "InputRef", "Output"} <= set(schema["$defs"])


jsonschema = pytest.importorskip("jsonschema")


@pytest.fixture(scope="module")
def validator():
    # The committed file is this generator over the registered kinds (checked above); the splat kinds
    # are in KINDS before their handlers are registered, so validate against the generator's output.
    schema = json.loads(render_schema(KINDS, {"splat_video": 1}))
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator.check_schema(json.loads(SCHEMA_FILE.read_text()))
    return jsonschema.Draft202012Validator(schema)


def test_schema_caps_a_video_job_at_one_input(validator):
    # Given a splat_video spec with two inputs, and the same spec as a splat job
    two = {**minimal_spec(), "kind": "splat_video", "inputs": [{"s3_key": "a.mp4"}, {"s3_key": "b.mp4"}]}
    # When checked against the schema, Then only the video job is refused, at its inputs
    errors = list(validator.iter_errors(two))
    assert [list(e.absolute_path) for e in errors] == [["inputs"]]
    assert list(validator.iter_errors({**two, "kind": "splat"})) == []


def dumped_full_spec() -> dict[str, Any]:
    return parse_spec(full_spec(), kinds=KINDS).model_dump(mode="json")


@pytest.mark.parametrize("build", [full_spec, minimal_spec, dumped_full_spec])
def test_schema_accepts_valid_specs(validator, build):
    assert list(validator.iter_errors(build())) == []


SCHEMA_REFUSES = [c for c in MALFORMED if c[4]]


@pytest.mark.parametrize("mutate", [c[1] for c in SCHEMA_REFUSES], ids=[c[0] for c in SCHEMA_REFUSES])
def test_schema_refuses_malformed_specs_too(validator, mutate):
    # Given a malformed spec that parse_spec refuses
    raw = mutate(full_spec())
    # When checked against the published schema
    errors = list(validator.iter_errors(raw))
    # Then the schema refuses it as well, so the web app can check before enqueueing
    assert errors


@pytest.mark.parametrize(
    ("ref", "label"),
    [
        ({"url": "https://h.example/a/b.jpg", "name": "b.jpg"}, "b.jpg"),
        (
            {"url": "https://h.example/a/b.jpg?X-Amz-Signature=s3cr3t#frag"},
            "https://h.example/a/b.jpg",
        ),
        ({"s3_key": "uploads/u1/c.jpg"}, "uploads/u1/c.jpg"),
    ],
)
def test_an_input_is_labelled_without_credentials(ref, label):
    # Given an input as a spec names it, Then messages name it by its file name, else by its URL
    # without query string or fragment (a credential), else by its S3 key
    spec = parse_spec(
        {"spec_version": 1, "job_id": "label-1", "kind": "inspect", "inputs": [ref]},
        kinds={"inspect": InspectParams},
    )
    assert spec.inputs[0].label == label


def test_a_specs_repr_carries_no_url_credential():
    # Given a spec with a presigned input URL, presigned output URLs and a callback URL with a token
    spec = parse_spec(
        {
            "spec_version": 1,
            "job_id": "repr-1",
            "kind": "inspect",
            "inputs": [{"url": "https://in.example/a.jpg?X-Amz-Signature=in-sig"}],
            "output": {"presigned_put": {"manifest.json": "https://out.example/m?X-Amz-Signature=out-sig"}},
            "callback_url": "https://app.example/hook?token=cb-token",
        },
        kinds={"inspect": InspectParams},
    )
    # When it is shown (a traceback, a log line, a Sentry event)
    shown = repr(spec)
    # Then every URL is there by its place, none with its query string; the spec itself is untouched
    assert "https://in.example/a.jpg" in shown and "https://app.example/hook" in shown
    for secret in ("in-sig", "out-sig", "cb-token", "X-Amz"):
        assert secret not in shown, secret
    assert spec.inputs[0].url == "https://in.example/a.jpg?X-Amz-Signature=in-sig"


def test_a_video_job_may_ask_for_at_most_2000_frames():
    # Given video specs whose fps and duration cap could ask for 72,000 frames, or exactly 2,000, or a
    # fixed count over a long video
    def video(params: dict[str, Any]) -> dict[str, Any]:
        return {**minimal_spec(), "kind": "splat_video", "params": params}

    # When parsed, Then the first is refused, saying how to fit, and the others are taken
    with pytest.raises(SpecError) as refused:
        parse_spec(video({"fps": 10, "max_duration_s": 7200}), kinds=KINDS)
    assert refused.value.code == "invalid_params"
    assert "72,000 frames, over the 2,000" in refused.value.message
    assert parse_spec(video({"fps": 10, "max_duration_s": 200}), kinds=KINDS).params.fps == 10
    assert (
        parse_spec(video({"frame_count": 500, "max_duration_s": 7200}), kinds=KINDS).params.frame_count == 500
    )
