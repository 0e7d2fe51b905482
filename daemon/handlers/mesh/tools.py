"""The mesh kind's Node tools (daemon/js/mesh.mjs: glTF Transform, the Khronos validator), one command
per child process, under a wall-clock limit and a V8 heap cap.

A child is its own process group, so a hung tool and anything it started are killed together at the
limit, or when the job is interrupted (a cancel or a spot notice raises in this thread while it waits).
The tool's own verdicts come back as error codes; a crash, a heap exhausted or a limit passed are
mapped here, once.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import InputError, JobError
from .. import children

JS_DIR = Path(__file__).resolve().parents[2] / "js"
"""daemon/js: the tools and their node_modules (`make node-deps`; hosts run `npm ci --omit=dev`)."""

INPUT_ERRORS = frozenset(
    {"corrupt_model", "unsupported_format", "empty_model", "model_too_large", "render_failed"}
)
"""Codes the tool returns about the model itself: the customer's input, never retried."""

V8_OUT_OF_MEMORY = "JavaScript heap out of memory"
TIMEOUT_CODE = "mesh_tool_timeout"


@dataclass(frozen=True)
class ToolLimits:
    time_s: float = 600.0
    """Wall-clock seconds one command may take."""
    heap_mb: int = 4096
    """V8's old-space cap (--max-old-space-size); the process as a whole stays under the worker's
    MemoryMax= (ops/systemd)."""


def node_binary() -> str:
    found = shutil.which("node")
    if found is None:
        raise JobError("node is not on this host's PATH (the mesh kind needs Node ≥ 20)", code="tool_missing")
    return found


def run_tool(command: str, args: dict[str, Any], limits: ToolLimits = ToolLimits()) -> dict[str, Any]:
    """`node mesh.mjs <command> <args>` → its JSON result. Raises InputError for the tool's verdicts
    on the model, JobError(code="mesh_tool_timeout") past the limit, JobError(code="mesh_tool_failed")
    for anything else it did."""
    argv = [node_binary(), f"--max-old-space-size={limits.heap_mb}", str(JS_DIR / "mesh.mjs"), command]
    status, stdout, stderr = run_limited(
        [*argv, json.dumps(args)], f"the mesh tool's {command}", limits.time_s
    )
    return _verdict(command, status, stdout, stderr, limits)


def run_tools(
    steps: list[tuple[str, dict[str, Any]]], limits: ToolLimits = ToolLimits()
) -> list[dict[str, Any]]:
    """Several commands in order in one Node process (`batch`): their results, in order. A stage's
    commands share Node's start-up and the codecs' set-up; the time limit covers them all."""
    if not steps:
        return []
    batch = {"steps": [{"command": command, "args": args} for command, args in steps]}
    return list(run_tool("batch", batch, limits)["results"])


@contextlib.contextmanager
def tools_beside(
    steps: list[tuple[str, dict[str, Any]]], limits: ToolLimits = ToolLimits()
) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """`run_tools(steps)` started now, in the background, while this thread does other work (the
    tools are one core, Python's measuring another): yields the function that waits for their
    results. Leaving the block by an exception (an interrupt, the other work's failure) kills them."""
    batch = {"steps": [{"command": command, "args": args} for command, args in steps]}
    argv = [node_binary(), f"--max-old-space-size={limits.heap_mb}", str(JS_DIR / "mesh.mjs"), "batch"]
    started = time.monotonic()
    child = children.start([*argv, json.dumps(batch)], JS_DIR, None)

    def results() -> list[dict[str, Any]]:
        left = max(0.0, limits.time_s - (time.monotonic() - started))
        status, stdout, stderr = children.finish(child, "the mesh tool's batch", left, TIMEOUT_CODE)
        return list(_verdict("batch", status, stdout, stderr, limits)["results"])

    try:
        yield results
    finally:
        if child.returncode is None:  # never leave a tool running behind the stage
            children.kill_group(child)


def run_limited(
    argv: list[str], what: str, time_s: float, *, env: dict[str, str] | None = None
) -> tuple[int, bytes, bytes]:
    """`argv` run in daemon/js under `time_s` (handlers/children.py): JobError(code="mesh_tool_timeout")
    past it."""
    return children.run_limited(argv, what, time_s, timeout_code=TIMEOUT_CODE, cwd=JS_DIR, env=env)


def _verdict(command: str, status: int, stdout: bytes, stderr: bytes, limits: ToolLimits) -> dict[str, Any]:
    text = stdout.decode(errors="replace").strip()
    if status in (0, 2) and text:
        result = json.loads(text.splitlines()[-1])
        if status == 0:
            return dict(result)
        code, message = str(result.get("error")), str(result.get("message"))
        if code in INPUT_ERRORS:
            raise InputError(message, code=code)
        raise JobError(f"the mesh tool's {command} failed: {message}", code="mesh_tool_failed")
    detail = stderr.decode(errors="replace").strip()
    if V8_OUT_OF_MEMORY in detail:
        raise InputError(
            f"the model needs more than the {limits.heap_mb} MB the mesh tools may use ({command})",
            code="model_too_large",
        )
    raise JobError(
        f"the mesh tool's {command} failed (status {status}): {detail[-500:] or 'no output'}",
        code="mesh_tool_failed",
    )
