"""Resuming inside a stage at its last finished tile (pointcloud/resume.py), with the real checkpoint store
(over a folder, as `run-local` uses it) and the real interrupt handling (a preempt signal to this
process): a notice while tiles are being worked in two processes checkpoints the tiles finished so far
and stops; the next attempt, in another folder, restores them and works only the others, to the same
result as one uninterrupted pass: the clean stage's distances, and the tile stage's files, byte for
byte (its finished tiles' results replayed from the checkpoint)."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from daemon.adapters.checkpoints import Checkpoints, LocalBlobs
from daemon.attempt.interrupts import PREEMPT_SIGNAL, Interrupts
from daemon.errors import JobPreempted
from daemon.handlers.pointcloud.cleanwork import Distances
from daemon.handlers.pointcloud.resume import resumable_pass
from daemon.handlers.stages import StageRecords, restore_checkpoint
from tests.pointcloud.test_clean import _terrain, _tiles

STAGES = ("read", "clean")


@dataclass
class Attempt:
    """What of a job context the pass uses: its checkpoints and interrupts."""

    checkpoints: Checkpoints
    interrupts: Interrupts


class Counted:
    """Distances, counting the tiles it was asked for (run here: one process)."""

    def __init__(self, work: Distances) -> None:
        self.work, self.tiles = work, []

    def __call__(self, tile: int):
        self.tiles.append(tile)
        return self.work(tile)


@pytest.fixture
def preempt_signal():
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGRTMIN + 1)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


def _pass(folder: Path, ctx: Attempt, work, processes: int, progress=lambda share: None) -> np.ndarray:
    records = StageRecords(folder, STAGES)
    out = folder / "clean" / "distances"
    out.mkdir(parents=True, exist_ok=True)
    ids = work.tiles.ids() if isinstance(work, Distances) else work.work.tiles.ids()
    return resumable_pass(ctx, records, "clean", out, ids, work, processes, keep=[out], progress=progress)


def test_a_notice_mid_pass_resumes_at_the_next_tile_on_another_machine(tmp_path, preempt_signal):
    xyz, _ = _terrain(40_000, 100)
    blobs = LocalBlobs(tmp_path / "store")
    # The uninterrupted pass, for reference
    whole = tmp_path / "whole"
    tiles = _tiles(xyz, whole / "clean" / "tiles", halo=5.0, tile_points=2_500)
    ids = tiles.ids()
    assert len(ids) == 16
    alone = Attempt(None, Interrupts())  # type: ignore[arg-type]
    expected = _pass(whole, alone, Distances(tiles, whole / "clean" / "distances", 8), 1)

    # Given an attempt working the tiles in two processes, preempted (the worker's signal) after the third
    first = tmp_path / "first"
    interrupts = Interrupts()
    interrupts.install()
    ctx = Attempt(Checkpoints(blobs, "pc-job", attempt=1), interrupts)
    tiles = _tiles(xyz, first / "clean" / "tiles", halo=5.0, tile_points=2_500)
    shares: list[float] = []

    def progress(share: float) -> None:
        shares.append(share)
        if len(shares) == 3:
            os.kill(os.getpid(), PREEMPT_SIGNAL)

    with pytest.raises(JobPreempted):
        _pass(first, ctx, Distances(tiles, first / "clean" / "distances", 8), 2, progress)
    assert len(shares) == 3  # it stopped at the tile it was working when the notice came

    # When the next attempt restores the checkpoint into another folder and cuts the tiles again
    second = tmp_path / "second"
    retry = Attempt(Checkpoints(blobs, "pc-job", attempt=2), Interrupts())
    assert restore_checkpoint(retry, StageRecords(second, STAGES)) == {}
    tiles = _tiles(xyz, second / "clean" / "tiles", halo=5.0, tile_points=2_500)
    counted = Counted(Distances(tiles, second / "clean" / "distances", 8))
    total = _pass(second, retry, counted, 1)

    # Then only the tiles after the third were worked, and the sums and files are the uninterrupted pass's
    assert counted.tiles == ids[3:]
    assert np.allclose(total, expected, rtol=1e-12)
    for tile in ids:
        assert np.array_equal(
            np.load(second / "clean" / "distances" / f"{tile}.npy"),
            np.load(whole / "clean" / "distances" / f"{tile}.npy"),
        )


def test_the_tile_stage_resumes_to_the_same_files(tmp_path, preempt_signal):
    from daemon.handlers.pointcloud.tilework import TileResult
    from tests.pointcloud.test_tilework import _cloud, _outputs, finish, setup

    cloud = _cloud()
    whole = _outputs(cloud, tmp_path / "whole", 1)
    blobs = LocalBlobs(tmp_path / "store")

    def attempt(folder: Path, ctx: Attempt, processes: int, progress=lambda share: None) -> list[int]:
        work, assembly = setup(cloud, folder)
        done, worked = folder / "done", []
        done.mkdir(exist_ok=True)

        def take(tile: int, result: TileResult) -> list[int]:
            worked.append(tile)
            result.save(done / f"{tile}.npz")
            assembly.add(result)
            return [result.points]

        def replay(tile: int) -> None:
            assembly.add(TileResult.load(done / f"{tile}.npz"))

        work.spill.mkdir(exist_ok=True)
        keep, records = [done, work.spill, work.pnts], StageRecords(folder, STAGES)
        ids = work.tiles.ids()
        resumable_pass(ctx, records, "clean", done, ids, work, processes, keep=keep, progress=progress,
                       take=take, replay=replay)  # fmt: skip
        assembly.finish(work)
        finish(assembly, folder)
        return worked

    # Given an attempt placing the tiles in two processes, preempted after the fifth
    first = tmp_path / "first"
    interrupts = Interrupts()
    interrupts.install()
    shares: list[float] = []

    def progress(share: float) -> None:
        shares.append(share)
        if len(shares) == 5:
            os.kill(os.getpid(), PREEMPT_SIGNAL)

    with pytest.raises(JobPreempted):
        attempt(first, Attempt(Checkpoints(blobs, "pc-tiles", attempt=1), interrupts), 2, progress)

    # When the next attempt restores its checkpoint in another folder
    second = tmp_path / "second"
    retry = Attempt(Checkpoints(blobs, "pc-tiles", attempt=2), Interrupts())
    assert restore_checkpoint(retry, StageRecords(second, STAGES)) == {}
    worked = attempt(second, retry, 1)

    # Then it worked only the tiles after the fifth, and made the uninterrupted run's files
    ids = sorted(int(p.stem) for p in (whole / "tiles-in" / "core").glob("*.bin"))
    assert worked == ids[5:]
    for name in ("cloud.copc.laz", "preview.png", "tiles/tileset.json"):
        assert (second / name).read_bytes() == (whole / name).read_bytes(), name
    pnts = sorted(p.name for p in (whole / "tiles").glob("*.pnts"))
    assert pnts == sorted(p.name for p in (second / "tiles").glob("*.pnts"))
    assert all((second / "tiles" / n).read_bytes() == (whole / "tiles" / n).read_bytes() for n in pnts)
