"""Work folders: removed after every attempt, and orphans (their process died) swept at start-up
while folders of live attempts, in other processes, are left alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from daemon.attempt.workdirs import claimed, sweep


def test_a_claimed_folder_is_removed_whatever_happens(tmp_path):
    folder = tmp_path / "job-1" / "attempt-1"
    with pytest.raises(RuntimeError), claimed(folder):
        (folder / "big.bin").write_bytes(b"x" * 1000)
        raise RuntimeError("stage failed")
    assert not (tmp_path / "job-1").exists()


def test_sweep_removes_orphans_and_spares_live_attempts(tmp_path):
    # Given an attempt still running in another process (it holds its folder's lock)
    live = tmp_path / "job-live" / "attempt-3"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from daemon.attempt.workdirs import claimed
            with claimed(Path({str(live)!r})):
                print("held", flush=True)
                time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        # And two orphans: one whose process was killed holding the lock, one never locked
        dead = subprocess.Popen(
            [sys.executable, "-c", f"from pathlib import Path; from daemon.attempt.workdirs import claimed; "
             f"c = claimed(Path({str(tmp_path / 'job-dead' / 'attempt-1')!r})); c.__enter__(); "
             f"import os, signal; os.kill(os.getpid(), signal.SIGKILL)"],
        )  # fmt: skip
        dead.wait(30)
        (tmp_path / "job-old" / "attempt-2").mkdir(parents=True)
        # When a worker starts and sweeps
        assert sweep(tmp_path) == 2
        # Then only the live attempt's folder is left
        assert live.is_dir()
        assert not (tmp_path / "job-dead").exists() and not (tmp_path / "job-old").exists()
    finally:
        holder.kill()
        holder.wait()
