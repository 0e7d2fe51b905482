"""Resuming inside a stage, at the last finished tile: a pass over the tiles (clean's distances and its
noise, classify's ground) keeps a ledger of the tiles it has finished and what their results add up to,
beside their files. When a checkpoint is due (a spot notice, a rebalance recommendation, the periodic
interval), the pass's folders are checkpointed with the ledger as the stage's partial checkpoint (the
stage's own, which its finished checkpoint later replaces), and a notice is then raised. The next
attempt restores them and the pass goes on with the tiles not in its ledger.

The tiles' points themselves are not in these checkpoints (they are the cloud's size again): they are
cut again from the read stage's records, deterministically the same (`job._partitioned`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import JobPreempted
from ..base import Context
from ..stages import StageRecords, save_checkpoint
from .tilework import in_parallel

log = logging.getLogger(__name__)

LEDGER = "ledger.json"


def resumable_pass(
    ctx: Context,
    records: StageRecords,
    stage: str,
    folder: Path,
    ids: Sequence[int],
    work: Callable[[int], Any],
    processes: int,
    *,
    keep: Sequence[Path],
    progress: Callable[[float], None],
    take: Callable[[int, Any], Any] | None = None,
    replay: Callable[[int], None] | None = None,
) -> np.ndarray:
    """`work` on every tile of `ids` not already in `folder`'s ledger (in `processes` processes); the
    element-wise sum of every tile's result (numbers or arrays of numbers), or of what `take(tile,
    result)` makes of it (a pass whose results are more than numbers keeps them itself, in `folder`).
    The tiles an earlier attempt finished are handed to `replay` first, in order. On a due checkpoint
    the ledger and `keep` (this stage's folders, the pass's among them) are checkpointed as `stage`'s."""
    ledger_path = folder / LEDGER
    ledger = json.loads(ledger_path.read_text()) if ledger_path.exists() else {"tiles": [], "total": None}
    finished = set(ledger["tiles"])
    todo = [tile for tile in ids if tile not in finished]
    if finished:
        log.info("%s resumes %s at tile %d of %d: the others were finished by an earlier attempt",
                 stage, folder.name, len(finished) + 1, len(ids))  # fmt: skip
    for tile in ledger["tiles"]:
        if replay is not None:
            replay(tile)
    total = None if ledger["total"] is None else np.asarray(ledger["total"])
    at = [0]

    def done(result: Any) -> None:
        nonlocal total
        tile = todo[at[0]]
        found = np.asarray(result if take is None else take(tile, result), dtype=float)
        total = found if total is None else total + found
        ledger["tiles"].append(tile)
        ledger["total"] = total.tolist()
        at[0] += 1
        progress(len(ledger["tiles"]) / len(ids))
        if _checkpoint_due(ctx):
            ledger_path.write_text(json.dumps(ledger))
            save_checkpoint(ctx, records, stage, folders=keep)
            log.info(
                "%s checkpointed at tile %d of %d (%s)", stage, len(ledger["tiles"]), len(ids), folder.name
            )
        ctx.interrupts.raise_requested()

    with ctx.interrupts.shielded():  # a notice waits for the tile at hand, then the checkpoint
        in_parallel(work, todo, processes, done)
    ledger_path.write_text(json.dumps(ledger))
    return np.zeros(0) if total is None else total


def _checkpoint_due(ctx: Context) -> bool:
    if ctx.checkpoints is None:
        return False
    asked = ctx.interrupts.checkpoint_requested
    ctx.interrupts.checkpoint_requested = False
    return ctx.interrupts.requested is JobPreempted or asked or ctx.checkpoints.due()
