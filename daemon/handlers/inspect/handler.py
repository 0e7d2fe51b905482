"""Kind `inspect`: fetch a capture's inputs and report what they are, before any GPU time is spent.

For every input: size, SHA-256, detected type (from magic bytes, not the file name: `handlers/sniff.py`),
and for images their pixel size and EXIF orientation. The result is one `manifest.json` output. It is
the simplest real job: it exercises downloads, the SSRF guard, storage, progress and callbacks end to
end, and it is what `make demo` runs until the splat handler lands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ...digest import file_sha256
from ...errors import InputError
from ..base import Context, Handler, Stage
from ..sniff import IMAGE_MEDIA_TYPES, sniff_media_type
from .params import InspectParams


def _image_facts(path: Path) -> dict[str, Any]:
    try:
        with Image.open(path) as img:
            orientation = img.getexif().get(0x0112, 1)
            img.verify()  # reads the whole file: catches truncated or corrupt data
            return {"width": img.width, "height": img.height, "exif_orientation": orientation}
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise InputError(f"{path.name}: not a readable image ({exc})", code="corrupt_image") from None


def describe_file(path: Path, *, with_sha256: bool) -> dict[str, Any]:
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path.name}: file is empty", code="empty_input")
    with path.open("rb") as src:
        head = src.read(64)
    facts: dict[str, Any] = {"name": path.name, "size": size, "type": sniff_media_type(head)}
    if with_sha256:
        facts["sha256"] = file_sha256(path)[1]
    if facts["type"] in IMAGE_MEDIA_TYPES.values():  # the images whose size Pillow reads
        facts.update(_image_facts(path))
    return facts


def run(ctx: Context) -> None:
    params: InspectParams = ctx.params
    if len(ctx.spec.inputs) > params.max_inputs:
        raise InputError(
            f"{len(ctx.spec.inputs)} inputs, more than max_inputs={params.max_inputs}", code="too_many_inputs"
        )
    with ctx.stage("fetch"):
        paths = ctx.fetch_inputs()
    with ctx.stage("inspect"):
        files = []
        for index, path in enumerate(paths):
            files.append(describe_file(path, with_sha256=params.sha256))
            ctx.progress((index + 1) / len(paths))
    with ctx.stage("store"):
        manifest = ctx.workdir / "manifest.json"
        manifest.write_text(json.dumps({"job_id": ctx.job_id, "files": files}, indent=2, sort_keys=True))
        ctx.put_output("manifest.json", manifest, "application/json")


HANDLER = Handler(
    kind="inspect",
    params_model=InspectParams,
    timeout_s=30 * 60,
    stages=(Stage("fetch", 6), Stage("inspect", 3), Stage("store", 1)),
    run=run,
    description="Fetch the inputs and write a manifest of what they are.",
)
