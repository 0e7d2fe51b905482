"""The mesh kind's Node tools through tools.run_tool: their verdicts on real generated models, and the
limits (time, heap, an interrupt) enforced on a real node process."""

from __future__ import annotations

import signal
import textwrap
import time
from pathlib import Path

import pytest
import trimesh

from daemon.errors import InputError, JobError
from daemon.handlers.mesh import tools
from daemon.handlers.mesh.tools import ToolLimits, run_tool, run_tools
from daemon.samples import models
from tests import meshes


@pytest.fixture(scope="module")
def sphere(tmp_path_factory) -> Path:
    return meshes.textured_sphere(tmp_path_factory.mktemp("models") / "sphere.glb", segments=32)


def test_analyze_counts_what_a_viewer_draws(sphere):
    analysis = run_tool("analyze", {"path": str(sphere)})
    written = trimesh.load(sphere, force="mesh")  # what trimesh wrote, read back by trimesh
    assert (analysis["primitives"], analysis["materials"]) == (1, 1)
    assert analysis["triangles"] == len(written.faces)
    assert analysis["vertices"] == len(written.vertices)
    [texture] = analysis["textures"]
    assert (texture["mime_type"], texture["width"], texture["height"]) == ("image/png", 256, 256)
    assert analysis["texture_bytes"] == texture["bytes"] > 0
    low, high = analysis["bounds"]["min"], analysis["bounds"]["max"]
    assert low == pytest.approx([-0.5] * 3, abs=0.01) and high == pytest.approx([0.5] * 3, abs=0.01)


def test_many_coloured_parts_are_joined_into_one_draw_with_a_palette_that_no_cap_resizes(tmp_path):
    # Given a CAD-like model: 30 parts, each its own mesh, node and plain-colour material
    cad = tmp_path / "cad.glb"
    models.write_glb(models.cad(parts=30), str(cad))
    source = run_tool("analyze", {"path": str(cad)})
    assert (source["primitives"], source["materials"], source["textures"]) == (30, 30, [])
    # When it is cleaned with join (the default) and without
    joined, kept = tmp_path / "joined.glb", tmp_path / "kept.glb"
    run_tools([("clean", {"path": str(cad), "out": str(joined), "join": True}),
               ("clean", {"path": str(cad), "out": str(kept), "join": False})])  # fmt: skip
    # Then joined it is one primitive whose colours are a palette texture, the same triangles drawn
    facts = run_tool("analyze", {"path": str(joined)})
    assert (facts["primitives"], facts["materials"], facts["triangles"]) == (1, 1, source["triangles"])
    [palette] = facts["textures"]
    assert palette["name"] == "PaletteBaseColor" and palette["height"] < palette["width"]
    # and kept, every part is still there
    assert run_tool("analyze", {"path": str(kept)})["primitives"] == 30
    # And a coarse level with a small texture cap leaves the palette's pixels alone (a resized
    # palette would blend neighbouring parts' colours, and a 4 px strip would shrink to nothing)
    coarse = tmp_path / "coarse.glb"
    run_tool("lod", {"path": str(joined), "out": str(coarse), "ratio": 0.2, "max_texture_size": 64})
    coarse_facts = run_tool("analyze", {"path": str(coarse)})
    assert [(t["width"], t["height"]) for t in coarse_facts["textures"]] == [
        (palette["width"], palette["height"])
    ]
    assert run_tool("validate", {"path": str(coarse)})["errors"] == 0


def test_the_validator_passes_a_good_model_and_names_what_breaks_a_bad_one(sphere, tmp_path):
    assert run_tool("validate", {"path": str(sphere)})["errors"] == 0
    broken = meshes.truncated(sphere, tmp_path / "broken.glb", keep=sphere.stat().st_size // 2)
    report = run_tool("validate", {"path": str(broken)})
    assert report["errors"] >= 1 and report["messages"][0]["severity"] == "error"
    with pytest.raises(InputError) as refused:
        run_tool("analyze", {"path": str(broken)})
    assert refused.value.code == "corrupt_model" and not refused.value.retryable


@pytest.fixture
def fake_tool(tmp_path, monkeypatch):
    """A stand-in mesh.mjs, to make node hang, exhaust its heap or crash on purpose."""

    def install(source: str) -> Path:
        (tmp_path / "mesh.mjs").write_text(textwrap.dedent(source))
        monkeypatch.setattr(tools, "JS_DIR", tmp_path)
        return tmp_path

    return install


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie waiting for its reaper does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _ends(pid: int) -> bool:
    """Whether `pid` ends within 10 s: SIGKILL is delivered when the process is next scheduled."""
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return not _alive(pid)


HANGS_WITH_A_CHILD = """
    import { spawn } from "node:child_process";
    import { writeFileSync } from "node:fs";
    const child = spawn("sleep", ["1000"], { stdio: "ignore" });
    writeFileSync(new URL("child.pid", import.meta.url), String(child.pid));
    setInterval(() => {}, 1000);
"""


def test_a_hung_tool_is_killed_with_its_children_at_the_limit(fake_tool):
    folder = fake_tool(HANGS_WITH_A_CHILD)
    # The limit must pass after the tool started its child (node starts slowly on a loaded
    # machine): a longer limit each time it did not
    for limit in (2, 4, 8, 16, 32):
        with pytest.raises(JobError) as stopped:
            run_tool("analyze", {}, ToolLimits(time_s=limit))
        assert stopped.value.code == "mesh_tool_timeout" and f"{limit} s" in stopped.value.message
        if (folder / "child.pid").exists():
            break
    assert _ends(int((folder / "child.pid").read_text()))


class Interrupted(BaseException):
    """As the daemon's JobInterrupted: raised in this thread by a signal handler."""


def test_an_interrupt_while_waiting_kills_the_tool(fake_tool):
    folder = fake_tool(HANGS_WITH_A_CHILD)

    def interrupt(signum, frame):
        if (folder / "child.pid").exists():  # the tool is up: interrupt the wait
            raise Interrupted
        signal.setitimer(signal.ITIMER_REAL, 0.1)

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.1)
    try:
        with pytest.raises(Interrupted):
            run_tool("analyze", {}, ToolLimits(time_s=600))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert _ends(int((folder / "child.pid").read_text()))


def test_an_exhausted_heap_is_a_model_too_large(fake_tool):
    fake_tool("""
        const hoard = [];
        for (;;) hoard.push(new Array(100000).fill(hoard.length));
    """)
    with pytest.raises(InputError) as refused:
        run_tool("analyze", {}, ToolLimits(heap_mb=64))
    assert refused.value.code == "model_too_large" and "64 MB" in refused.value.message


def test_a_crash_is_the_tools_failure_with_its_message(fake_tool):
    fake_tool('throw new Error("boom from the tool");')
    with pytest.raises(JobError) as failed:
        run_tool("analyze", {})
    assert failed.value.code == "mesh_tool_failed" and "boom from the tool" in failed.value.message
    assert not isinstance(failed.value, InputError)


def test_tools_beside_give_their_results_after_the_work_done_here(sphere):
    steps = [("analyze", {"path": str(sphere)}), ("validate", {"path": str(sphere)})]
    with tools.tools_beside(steps) as results:
        measured = trimesh.load(sphere, force="mesh")  # this thread's own work meanwhile
        analysis, report = results()
    assert analysis["triangles"] == len(measured.faces) and report["errors"] == 0


def test_a_failure_beside_the_tools_kills_them(fake_tool):
    folder = fake_tool(HANGS_WITH_A_CHILD)
    beside = tools.tools_beside([("analyze", {})], ToolLimits(time_s=600))
    with pytest.raises(ValueError, match="the measuring failed"), beside:
        deadline = time.monotonic() + 30
        while not (folder / "child.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # the tool is up, with its child
        raise ValueError("the measuring failed")
    assert _ends(int((folder / "child.pid").read_text()))


def test_the_limit_of_tools_beside_counts_from_their_start(fake_tool):
    # a tool that answers 5 s after it starts, under a 3 s limit: the work here outlasts the limit,
    # so the wait must end at once (a limit counted from the wait would see the answer)
    fake_tool("""
        setTimeout(() => process.stdout.write(JSON.stringify({ results: [{}] }) + "\\n"), 5000);
    """)
    started = time.monotonic()
    with tools.tools_beside([("analyze", {})], ToolLimits(time_s=3)) as results:
        while time.monotonic() - started < 3:
            time.sleep(0.05)
        with pytest.raises(JobError) as stopped:
            results()
    assert stopped.value.code == "mesh_tool_timeout"
