"""Job work folders on local disk: claimed while in use, swept when their owner is gone.

Each attempt works in `DAEMON_WORK_DIR/<job id>/attempt-<n>/`. The work-horse holds an exclusive
`flock` on the folder's `.lock` file for as long as the attempt runs; the kernel drops the lock when the
process dies, however it dies. The runner removes the folder in every outcome it sees; what it cannot
see (a horse killed by SIGKILL, a worker killed with its horse, a machine reboot on the same disk) is
found at the next worker start by `sweep`: a folder whose lock can be taken has no owner. Several
workers (one per GPU) share DAEMON_WORK_DIR safely: a live attempt's lock is never free.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


@contextlib.contextmanager
def claimed(folder: Path) -> Iterator[Path]:
    """Create `folder`, hold its lock while the block runs, then remove it."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        _remove_if_empty(folder.parent)
        os.close(fd)


def sweep(root: Path) -> int:
    """Remove attempt folders under `root` that no live process holds; returns how many."""
    removed = 0
    for folder in sorted(root.glob("*/attempt-*")):
        if folder.is_dir() and _unowned(folder):
            shutil.rmtree(folder, ignore_errors=True)
            _remove_if_empty(folder.parent)
            removed += 1
    if removed:
        log.warning("removed %d orphaned work folder(s) under %s", removed, root)
    return removed


def _unowned(folder: Path) -> bool:
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR)
    except FileNotFoundError:
        return True  # never claimed, or its lock file already removed: nobody uses it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # also releases a lock taken just now


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()
