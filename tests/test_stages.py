"""The shared stage machinery (handlers/stages.py) across two attempts on two work folders, with the
real checkpoint store (adapters/checkpoints.py over a folder, as `run-local` uses it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from daemon.adapters.checkpoints import Checkpoints, LocalBlobs
from daemon.handlers.stages import StageRecords, restore_checkpoint, run_stage

ORDER = ("read", "analyze", "optimize")


@dataclass
class Attempt:
    """What of a job context the stage machinery uses: its checkpoints."""

    checkpoints: Checkpoints


def test_an_attempt_resumes_after_the_last_stage_another_finished(tmp_path):
    blobs = LocalBlobs(tmp_path / "store")
    ran: list[str] = []

    def read(folder: Path) -> dict[str, int]:
        ran.append("read")
        (folder / "read").mkdir()
        (folder / "read" / "source.glb").write_bytes(b"glb bytes")
        return {"bytes": 9}

    def analyze() -> dict[str, int]:
        ran.append("analyze")
        return {"triangles": 12}

    # Given a first attempt that finished two stages, then was lost
    first, second = tmp_path / "first", tmp_path / "second"  # each attempt's work folder
    first.mkdir(), second.mkdir()
    records = StageRecords(first, ORDER)
    ctx = Attempt(Checkpoints(blobs, "job-1", attempt=1))
    assert restore_checkpoint(ctx, records) is None  # nothing to resume from
    run_stage(ctx, records, "read", lambda: read(first), folders=(first / "read",))
    run_stage(ctx, records, "analyze", analyze)
    # When the next attempt, on another machine, restores into an empty folder
    again = StageRecords(second, ORDER)
    retry = Attempt(Checkpoints(blobs, "job-1", attempt=2))
    assert restore_checkpoint(retry, again) == {}
    # Then both stages come back from their records, the first with its files, neither run again
    assert run_stage(retry, again, "read", lambda: read(second)) == {"bytes": 9}
    assert run_stage(retry, again, "analyze", analyze) == {"triangles": 12}
    assert (second / "read" / "source.glb").read_bytes() == b"glb bytes"
    assert ran == ["read", "analyze"]
    # And the stage that had not finished runs, and is recorded
    assert run_stage(retry, again, "optimize", lambda: {"bytes": 5}) == {"bytes": 5}
    assert again.all() == {"read": {"bytes": 9}, "analyze": {"triangles": 12}, "optimize": {"bytes": 5}}
