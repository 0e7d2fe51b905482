"""Child processes a job kind runs (the mesh kind's Node tools and Assimp, the pointcloud kind's
py3dtiles): a fixed program in a process group of its own, under a wall-clock limit.

The group is killed at the limit, and when the job is interrupted while it waits (a cancel or a spot
notice raises in this thread), so a hung tool and anything it started never outlive the stage.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from ..errors import JobError


def run_limited(
    argv: list[str], what: str, time_s: float, *, timeout_code: str, cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> tuple[int, bytes, bytes]:  # fmt: skip
    """Run `argv`: (status, stdout, stderr). JobError(code=`timeout_code`) past `time_s`."""
    return finish(start(argv, cwd, env), what, time_s, timeout_code)


def start(argv: list[str], cwd: Path | None, env: dict[str, str] | None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 - fixed programs; paths from the job are single arguments
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )


def finish(
    child: subprocess.Popen[bytes], what: str, time_s: float, timeout_code: str
) -> tuple[int, bytes, bytes]:
    """Wait for `child` at most `time_s`: (status, stdout, stderr); its group killed past the limit or
    when the wait is interrupted."""
    try:
        stdout, stderr = child.communicate(timeout=time_s)
    except subprocess.TimeoutExpired:
        kill_group(child)
        raise JobError(f"{what} took longer than {time_s:.0f} s and was stopped", code=timeout_code) from None
    finally:
        if child.returncode is None:  # leaving with an interrupt: never leave the tool running
            kill_group(child)
    return child.returncode, stdout, stderr


def kill_group(child: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is already gone
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()
