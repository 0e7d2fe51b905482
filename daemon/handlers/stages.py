"""Stages that finish once: their records in the work folder, and the checkpoints that carry the
folder to the next attempt, on this machine or another. Every kind with resumable stages uses this.

A stage that finishes writes a small JSON record of what it produced (`stages/<name>.json`,
atomically) after its files are complete. A later run over the same folder (`run-local --workdir`, or
an attempt that restored the folder from a checkpoint) skips every stage that has a record and reads
its results from the record. A stage without a record is redone from scratch, so every stage must be
idempotent over its own files.

A checkpoint is what a finished stage adds (its folders as `<stage>.tar`, named relative to the work
folder, and single files) plus every record so far: `restore` extracts the tars in place and writes
the records back, and hands the kind its other files to put where they belong.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import Context

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageRecords:
    """The records of a kind's stages under `root`; `order` is every stage in run order."""

    root: Path
    order: tuple[str, ...]

    def _path(self, stage: str) -> Path:
        if stage not in self.order:
            raise ValueError(f"unknown stage {stage!r}: one of {', '.join(self.order)}")
        return self.root / "stages" / f"{stage}.json"

    def finished(self, stage: str) -> dict[str, Any] | None:
        """The record of `stage` if it finished in this folder before, else None."""
        try:
            return dict(json.loads(self._path(stage).read_text()))
        except FileNotFoundError:
            return None

    def reused(self, stage: str) -> dict[str, Any] | None:
        """`finished(stage)`, saying in the log that an earlier run's results are reused."""
        done = self.finished(stage)
        if done is not None:
            log.info("%s finished in an earlier run over this folder: reusing its results", stage)
        return done

    def record(self, stage: str, summary: dict[str, Any]) -> None:
        """Mark `stage` finished with `summary` (JSON); call only once its files are complete."""
        path = self._path(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{stage}-")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(summary, out, indent=2, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def forget_from(self, stage: str) -> None:
        """Drop the records of `stage` and every later one (their inputs changed)."""
        for later in self.order[self.order.index(stage) :]:
            self._path(later).unlink(missing_ok=True)

    def all(self) -> dict[str, dict[str, Any]]:
        """Every finished stage's record, in run order."""
        return {stage: rec for stage in self.order if (rec := self.finished(stage)) is not None}


def save_checkpoint(
    ctx: Context,
    records: StageRecords,
    stage: str,
    *,
    folders: Sequence[Path] = (),
    files: Mapping[str, Path] | None = None,
    drop: Sequence[str] = (),
) -> None:
    """Checkpoint what `stage` produced: `folders` (under the work folder) as `<stage>.tar`, `files`
    under their names, without the entries named in `drop` (superseded), with every record."""
    if ctx.checkpoints is None:
        return
    if folders:
        tar_path = records.root / f".{stage}.tar"
        with tarfile.open(tar_path, "w") as tar:
            for folder in folders:
                tar.add(folder, arcname=folder.relative_to(records.root).as_posix())
        ctx.checkpoints.add(f"{stage}.tar", tar_path)
        tar_path.unlink()
    for name, path in (files or {}).items():
        ctx.checkpoints.add(name, path)
    for name in drop:
        ctx.checkpoints.entries.pop(name, None)
    ctx.checkpoints.commit(records.all())


def restore_checkpoint(ctx: Context, records: StageRecords) -> dict[str, Path] | None:
    """Bring the job's newest checkpoint back into the work folder: the stage tars extracted in place
    (tar's "data" filter: nothing outside the folder, no devices or links out), the records written.
    Returns the checkpoint's other files (name → a path under `root/.restore`) for the kind to place,
    or None when there is no checkpoint."""
    if ctx.checkpoints is None:
        return None
    restored = ctx.checkpoints.restore(records.root / ".restore")
    if restored is None:
        return None
    others: dict[str, Path] = {}
    for name, path in restored.files.items():
        if name.endswith(".tar"):
            with tarfile.open(path) as tar:
                tar.extractall(records.root, filter="data")
            path.unlink()
        else:
            others[name] = path
    for stage, record in restored.records.items():
        records.record(stage, record)
    done = [s for s in records.order if s in restored.records]
    log.info("restored stages %s from attempt %d", ", ".join(done) or "none", restored.attempt)
    return others


def run_stage(
    ctx: Context,
    records: StageRecords,
    stage: str,
    work: Callable[[], dict[str, Any]],
    *,
    folders: Sequence[Path] = (),
    files: Mapping[str, Path] | None = None,
) -> dict[str, Any]:
    """`stage`'s record when it finished before; else run `work` (its summary is recorded), then
    checkpoint `folders` and `files` with every record."""
    done = records.reused(stage)
    if done is not None:
        return done
    summary = work()
    records.record(stage, summary)
    save_checkpoint(ctx, records, stage, folders=folders, files=files)
    return summary


@dataclass(frozen=True)
class Stages:
    """A kind's stages over one work folder: `run` each in its turn."""

    ctx: Context
    records: StageRecords

    def run(
        self, name: str, work: Callable[[], dict[str, Any]], *, folders: Sequence[Path] | None = None
    ) -> dict[str, Any]:
        """`name` run once inside `ctx.stage(name)`, its folder `root/name` (or `folders`) checkpointed
        with its record; or, when it finished before, its record."""
        with self.ctx.stage(name):
            chosen = (self.records.root / name,) if folders is None else folders
            return run_stage(self.ctx, self.records, name, work, folders=chosen)
