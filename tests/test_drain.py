"""Draining an instance by hand, against real workers and Redis: no new jobs, the running job finishes or
checkpoints, then the workers stop; `scripts/drain_instance.sh` driven through a stand-in `systemctl`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from redis import Redis

from daemon.worker.signals import DRAIN_SIGNAL
from tests.fixtures_daemon import ROOT, enqueue_cli, wait_until
from tests.test_worker_faults import held_spec, horse_pid, local_row, slow_spec, wait_status

pytestmark = pytest.mark.slow

FAKE_SYSTEMCTL = """#!/usr/bin/env bash
# Stands in for systemctl with the three calls drain_instance.sh makes, for one unit whose main process
# is $FAKE_MAIN_PID; `stop` does what systemd does (SIGTERM the main process, wait for it to exit).
set -euo pipefail
echo "$*" >> "$FAKE_SYSTEMCTL_LOG"
case "$1" in
  list-units) echo "capture-daemon@0.service loaded active running capture daemon GPU 0" ;;
  show) echo "$FAKE_MAIN_PID" ;;
  stop)  # until it exits (here its parent is pytest, which reaps it later: a zombie counts as gone)
    kill -TERM "$FAKE_MAIN_PID"
    while [ "$(awk '{print $3}' "/proc/$FAKE_MAIN_PID/stat" 2>/dev/null || echo gone)" != Z ] \
      && kill -0 "$FAKE_MAIN_PID" 2>/dev/null; do sleep 0.2; done ;;
  *) echo "unexpected systemctl $*" >&2; exit 1 ;;
esac
"""


def queued_ids(redis: Redis, queue: str = "default") -> list[str]:
    return [i.decode() for i in redis.lrange(f"rq:queue:{queue}", 0, -1)]


def test_drain_lets_the_running_job_finish_takes_no_other_then_stops(
    daemon_env, file_server, start_worker, tmp_path
):
    # Given a worker running a job, and another job waiting
    worker = start_worker(daemon_env)
    enqueue_cli(daemon_env, held_spec(file_server, "drain-running"))
    wait_status(tmp_path, "drain-running", "running", worker=worker)
    file_server.wait_held("drain-running")
    enqueue_cli(daemon_env, slow_spec(file_server, "drain-waiting", 0.1))
    # When the operator drains it (no systemd here: the command stops the worker itself), and the
    # running job's download goes on once the worker has taken the drain
    drain = subprocess.Popen(
        [sys.executable, "-m", "daemon", "drain", "--pid", str(worker.proc.pid), "--stop"],
        env=daemon_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_until(lambda: "drain requested" in worker.logs(), timeout=60, message=worker.logs)
    file_server.release("drain-running")
    stdout, stderr = drain.communicate(timeout=120)
    # Then the running job completed, the worker exited cleanly, and the other job still waits
    assert drain.returncode == 0, stderr
    report = json.loads(stdout)
    assert report["finished"] == ["drain-running"] and report["checkpointed"] == [] and report["stopped"]
    assert local_row(tmp_path, "drain-running")["status"] == "completed"
    assert worker.proc.wait(30) == 0
    assert queued_ids(Redis.from_url(daemon_env["REDIS_URL"])) == ["drain-waiting"]
    assert "drain requested: taking no new jobs (job drain-running finishes first)" in worker.logs()


def test_a_job_that_arrives_while_an_idle_worker_drains_is_handed_back(daemon_env, file_server, start_worker):
    # Given an idle worker, waiting for jobs (rq marks it idle as it enters its wait: a drain sent
    # earlier would be seen before the wait, and the job never dequeued), that is told to drain
    worker = start_worker(daemon_env)
    redis = Redis.from_url(daemon_env["REDIS_URL"])
    wait_until(lambda: [redis.hget(key, "state") for key in redis.smembers("rq:workers")] == [b"idle"],
               timeout=60, message=worker.logs)  # fmt: skip
    os.kill(worker.proc.pid, DRAIN_SIGNAL)
    # When a job arrives
    enqueue_cli(daemon_env, slow_spec(file_server, "drain-late", 0.1))
    # Then it is handed back, first in line and whole, and the worker stays up, idle
    said = ("job drain-late handed back to queue default: this worker is draining", "taking no new jobs")
    wait_until(lambda: all(line in worker.logs() for line in said), timeout=60, message=worker.logs)
    assert queued_ids(redis) == ["drain-late"]
    assert redis.hget("rq:job:drain-late", "status") == b"queued"
    assert not redis.lrange("rq:queue:default:intermediate", 0, -1)  # not stuck half-dequeued
    assert worker.proc.poll() is None


def test_drain_script_checkpoints_the_running_job_and_stops_the_unit(
    daemon_env, file_server, start_worker, tmp_path
):
    # Given a worker running a long job, as unit capture-daemon@0 of a (stand-in) systemd
    worker = start_worker(daemon_env)
    enqueue_cli(daemon_env, slow_spec(file_server, "drain-long", 30))
    wait_until(lambda: horse_pid(worker), timeout=30)
    wait_status(tmp_path, "drain-long", "running", worker=worker)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(FAKE_SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)
    calls = tmp_path / "systemctl.log"
    env = {
        **daemon_env,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_MAIN_PID": str(worker.proc.pid),
        "FAKE_SYSTEMCTL_LOG": str(calls),
        "CAPTURE_DAEMON_HOME": str(ROOT),
        "CAPTURE_DAEMON_PYTHON": sys.executable,
        "CAPTURE_DAEMON_ENV": daemon_env["DAEMON_ENV_FILE"],
    }
    # When the operator drains the instance without waiting
    done = subprocess.run(
        [str(ROOT / "scripts" / "drain_instance.sh"), "--checkpoint"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    # Then the job was stopped through the spot path: requeued to resume elsewhere, worker exited 0
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout.splitlines()[1])["checkpointed"] == ["drain-long"]
    assert worker.proc.wait(30) == 0
    row = wait_status(tmp_path, "drain-long", "requeued")
    assert row["error_code"] == "preempted"
    assert queued_ids(Redis.from_url(daemon_env["REDIS_URL"])) == ["drain-long"]
    # and the unit was stopped by "systemd", so that Restart=always cannot bring it back
    assert calls.read_text().splitlines()[-1] == "stop capture-daemon@0.service"


def test_drain_script_passes_shellcheck_and_bash_syntax():
    script = Path(ROOT / "scripts" / "drain_instance.sh")
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    if not any((Path(d) / "shellcheck").exists() for d in os.environ["PATH"].split(os.pathsep)):
        pytest.skip("shellcheck is not installed (make test installs it)")
    checked = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout
