"""systemd: the sd_notify client against real AF_UNIX datagram sockets, and the unit checked by systemd."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.config import VARIABLES, load_settings
from daemon.telemetry.systemd import NOTIFY_SOCKET, WATCHDOG_PID, WATCHDOG_USEC, Notifier

REPO = Path(__file__).resolve().parent.parent
UNIT_DIR = REPO / "ops" / "systemd"
TEMPLATE = UNIT_DIR / "capture-daemon@.service"
TARGET = UNIT_DIR / "capture-daemon.target"
ENV_EXAMPLE = UNIT_DIR / "daemon.env.example"
DEFAULTS = {var.name: var.default for var in VARIABLES}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bound_socket(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    # The sender's credentials come with each datagram, as systemd checks them for NotifyAccess=main.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.settimeout(5.0)
    return sock


def receive(sock: socket.socket) -> tuple[str, int]:
    """One datagram: its text and the sender's PID (SCM_CREDENTIALS)."""
    data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
    pid = next(
        struct.unpack("3i", cdata)[0]
        for level, kind, cdata in ancillary
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
    )
    return data.decode(), pid


def pending(sock: socket.socket) -> list[str]:
    """Every datagram already queued, without waiting."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(5.0)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A notify socket bound at a path in tmp_path, as systemd's /run/systemd/notify."""
    path = tmp_path / "notify"
    assert len(str(path)) < 100, "AF_UNIX paths are limited to 108 bytes"
    sock = bound_socket(str(path))
    yield sock, str(path)
    sock.close()


# -- messages ------------------------------------------------------------------------------------------


def test_ready_sends_ready_and_status_in_one_datagram(listener):
    # Given a notifier built from systemd's environment
    sock, path = listener
    notifier = Notifier.from_env({NOTIFY_SOCKET: path})

    # When the worker says it is ready
    sent = notifier.ready("serving high,default,low")

    # Then one datagram carries both fields, sent by this (the main) process
    assert sent is True
    assert receive(sock) == ("READY=1\nSTATUS=serving high,default,low", os.getpid())
    assert notifier.enabled


def test_status_stopping_and_extend_timeout(listener):
    sock, path = listener
    notifier = Notifier(path)

    notifier.status("running job abc")
    notifier.stopping("preempting job abc")
    notifier.extend_timeout(30_000_000)

    assert [receive(sock)[0] for _ in range(3)] == [
        "STATUS=running job abc",
        "STOPPING=1\nSTATUS=preempting job abc",
        "EXTEND_TIMEOUT_USEC=30000000",
    ]


def test_a_newline_in_a_value_cannot_inject_a_field(listener):
    sock, path = listener
    Notifier(path).status("boom\nREADY=1")
    assert receive(sock)[0] == "STATUS=boom READY=1"


def test_a_bad_field_name_is_refused_loudly(listener):
    _, path = listener
    with pytest.raises(ValueError, match="field name"):
        Notifier(path).notify(ready=1)


def test_abstract_namespace_socket():
    # Given a socket in the abstract namespace, which NOTIFY_SOCKET names with a leading "@"
    name = f"capture-daemon-test-{uuid.uuid4().hex}"
    sock = bound_socket(b"\0" + name.encode())
    try:
        # When
        Notifier.from_env({NOTIFY_SOCKET: "@" + name}).ready()
        # Then
        assert receive(sock)[0] == "READY=1"
    finally:
        sock.close()


# -- watchdog ------------------------------------------------------------------------------------------


def test_watchdog_ping_sends_at_most_once_per_third_of_the_interval(listener):
    # Given a 3 s watchdog (systemd: WatchdogSec=3) meant for this process
    sock, path = listener
    clock = FakeClock()
    env = {NOTIFY_SOCKET: path, WATCHDOG_USEC: "3000000", WATCHDOG_PID: str(os.getpid())}
    notifier = Notifier.from_env(env, clock=clock)
    assert notifier.watchdog_interval_s == 3.0

    # When the loop pings many times within one second, then once a second later
    first = notifier.watchdog_ping()
    burst = []
    for _ in range(100):
        clock.now += 0.0099
        burst.append(notifier.watchdog_ping())
    clock.now += 0.02  # 1.01 s after the first ping
    later = notifier.watchdog_ping()

    # Then only the first and the last went out
    assert first is True and later is True
    assert not any(burst)
    assert pending(sock) == ["WATCHDOG=1", "WATCHDOG=1"]


def test_watchdog_meant_for_another_process_is_ignored(listener):
    # Given WATCHDOG_PID naming another process (we inherited the variables from our parent)
    sock, path = listener
    env = {NOTIFY_SOCKET: path, WATCHDOG_USEC: "3000000", WATCHDOG_PID: str(os.getpid() + 1)}

    # When
    notifier = Notifier.from_env(env)

    # Then the watchdog is off and pinging sends nothing, but notifications still work
    assert notifier.watchdog_interval_s is None
    assert notifier.watchdog_ping() is False
    assert pending(sock) == []
    assert notifier.status("x") is True


def test_no_watchdog_without_watchdog_usec(listener):
    _, path = listener
    notifier = Notifier.from_env({NOTIFY_SOCKET: path})
    assert notifier.watchdog_interval_s is None
    assert notifier.watchdog_ping() is False


# -- failures and no-ops -------------------------------------------------------------------------------


def test_without_notify_socket_everything_is_a_no_op():
    notifier = Notifier.from_env({WATCHDOG_USEC: "3000000"})

    results = [
        notifier.ready("x"),
        notifier.status("x"),
        notifier.stopping(),
        notifier.extend_timeout(1),
        notifier.watchdog(),
        notifier.watchdog_ping(),
    ]

    assert results == [False] * 6
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    assert "off" in notifier.describe()


def test_a_socket_that_disappears_logs_one_warning_and_never_raises(listener, caplog):
    # Given a notifier whose socket goes away (systemd restarted, a stale NOTIFY_SOCKET)
    sock, path = listener
    notifier = Notifier(path, watchdog_usec=3_000_000)
    sock.close()
    os.unlink(path)

    # When the worker keeps notifying
    with caplog.at_level(logging.DEBUG, logger="daemon.telemetry.systemd"):
        results = [notifier.ready("x"), notifier.watchdog(), notifier.status("y")]

    # Then nothing raised, and the failure was a warning once, the rest at debug
    assert results == [False, False, False]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert path in warnings[0].getMessage()


def test_a_non_unix_notify_socket_turns_notifications_off(caplog):
    with caplog.at_level(logging.WARNING, logger="daemon.telemetry.systemd"):
        notifier = Notifier.from_env({NOTIFY_SOCKET: "vsock:2:1234"})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert "not a unix socket" in caplog.text


def test_a_forked_child_does_not_notify(listener):
    # Given a notifier created by the worker, and a work-horse forked from it
    sock, path = listener
    notifier = Notifier(path, watchdog_usec=3_000_000)
    pid = os.fork()
    if pid == 0:  # the child: any datagram would be dropped by systemd (NotifyAccess=main)
        sent = notifier.ready() or notifier.watchdog() or notifier.watchdog_ping()
        os._exit(1 if sent else 0)

    # Then the child sent nothing
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert pending(sock) == []


# -- environment ----------------------------------------------------------------------------------------


def test_variables_are_removed_from_the_mapping_they_were_read_from(listener):
    _, path = listener
    env = {NOTIFY_SOCKET: path, WATCHDOG_USEC: "3000000", WATCHDOG_PID: str(os.getpid()), "PATH": "/bin"}

    notifier = Notifier.from_env(env)

    assert env == {"PATH": "/bin"}
    assert notifier.enabled and notifier.watchdog_interval_s == 3.0


def test_os_environ_is_cleaned_so_subprocesses_do_not_inherit_it(listener, monkeypatch):
    # Given systemd's variables in this process's environment
    _, path = listener
    monkeypatch.setenv(NOTIFY_SOCKET, path)
    monkeypatch.setenv(WATCHDOG_USEC, "3000000")
    monkeypatch.setenv(WATCHDOG_PID, str(os.getpid()))

    # When the notifier reads them
    notifier = Notifier.from_env()

    # Then it keeps them, and neither os.environ nor a subprocess (ffmpeg, COLMAP) sees them
    assert notifier.enabled and notifier.watchdog_interval_s == 3.0
    assert not {NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID} & set(os.environ)
    out = subprocess.run(["env"], capture_output=True, text=True, check=True).stdout
    assert NOTIFY_SOCKET not in out and WATCHDOG_USEC not in out


def test_a_child_process_notifies_end_to_end(listener):
    # Given a Python process started the way systemd starts the worker: NOTIFY_SOCKET and WATCHDOG_USEC
    # in its environment (WATCHDOG_PID absent: the watchdog is then meant for whoever reads it)
    sock, path = listener
    script = (
        "import os, sys\n"
        "from daemon.telemetry.systemd import Notifier\n"
        "n = Notifier.from_env()\n"
        "assert n.ready('serving high,default,low')\n"
        "assert n.watchdog_ping() and not n.watchdog_ping()\n"
        "assert 'NOTIFY_SOCKET' not in os.environ\n"
        "print(n.describe())\n"
    )
    env = {**os.environ, NOTIFY_SOCKET: path, WATCHDOG_USEC: "120000000", "PYTHONPATH": str(REPO)}
    env.pop(WATCHDOG_PID, None)

    # When it runs
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = proc.communicate(timeout=10)

    # Then its datagrams arrive in systemd's format, from its own PID (what NotifyAccess=main checks)
    assert proc.returncode == 0, err
    assert receive(sock) == ("READY=1\nSTATUS=serving high,default,low", proc.pid)
    assert receive(sock) == ("WATCHDOG=1", proc.pid)
    assert pending(sock) == []
    assert f"{path}, watchdog 120s" in out


# -- the unit file --------------------------------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values, in order]}} (keys repeat: DeviceAllow=, Environment=)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60}
    for suffix, factor in sorted(units.items(), key=lambda item: -len(item[0])):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(TEMPLATE)


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"[{section}] {key}= expected once, found {values}"
    return values[0]


def test_unit_is_a_notify_service_with_a_watchdog_fed_by_the_main_process(unit):
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    # The watchdog must outlast the longest gap between two turns of a healthy worker's loop: the idle
    # dequeue wait, the heartbeat while a job runs, rq's back-off from an unreachable Redis.
    from rq.worker import Worker

    longest_gap = max(
        float(DEFAULTS["DAEMON_MAINTENANCE_INTERVAL_S"] or 0),
        float(DEFAULTS["DAEMON_MONITOR_INTERVAL_S"] or 0),
        Worker.max_connection_wait_time,
    )
    assert seconds(one(unit, "Service", "WatchdogSec")) >= 2 * longest_gap


def test_unit_stops_by_checkpointing_within_its_stop_timeout(unit):
    assert one(unit, "Service", "KillMode") == "mixed"
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    stop_grace = float(DEFAULTS["DAEMON_STOP_TIMEOUT_S"] or 0)
    assert seconds(one(unit, "Service", "TimeoutStopSec")) >= stop_grace + 30


def test_unit_restarts_forever_but_not_on_a_configuration_error(unit):
    assert one(unit, "Service", "Restart") == "always"
    assert "78" in one(unit, "Service", "RestartPreventExitStatus").split()
    # Start limits are read in [Unit] only; Restart= alone (one start per RestartSec) must never reach
    # them, or an outage at boot would leave the GPU idle in a failed unit.
    assert not {"StartLimitIntervalSec", "StartLimitBurst"} & set(unit["Service"])
    interval = seconds(one(unit, "Unit", "StartLimitIntervalSec"))
    burst = int(one(unit, "Unit", "StartLimitBurst"))
    restart = seconds(one(unit, "Service", "RestartSec"))
    assert interval > 0 and burst > interval / restart


def test_unit_runs_one_gpu_per_instance_as_the_capture_user(unit):
    env = unit["Service"]["Environment"]
    assert "CUDA_VISIBLE_DEVICES=%i" in env
    assert "PYTHONUNBUFFERED=1" in env
    # A fixed per-instance worker name would collide with its own stale rq registration after a kill.
    assert not any(e.startswith("DAEMON_WORKER_NAME=") for e in env)
    assert one(unit, "Service", "User") == "capture"
    assert one(unit, "Service", "Group") == "capture"
    assert unit["Service"]["EnvironmentFile"] == [
        "/etc/capture-daemon/daemon.env",
        "-/etc/capture-daemon/gpu%i.env",
    ]
    assert one(unit, "Service", "ExecStart") == "/opt/capture-daemon/.venv/bin/python -m daemon worker"
    assert one(unit, "Service", "WorkingDirectory") == "/opt/capture-daemon"
    assert "network-online.target" in unit["Unit"]["After"]
    assert "network-online.target" in unit["Unit"]["Wants"]
    assert one(unit, "Unit", "PartOf") == "capture-daemon.target"
    assert one(unit, "Install", "WantedBy") == "capture-daemon.target"


def test_unit_is_hardened_but_leaves_cuda_its_devices(unit):
    service = unit["Service"]
    for key in (
        "NoNewPrivileges",
        "PrivateTmp",
        "ProtectHome",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "RestrictSUIDSGID",
        "LockPersonality",
        "RestrictRealtime",
        "RestrictNamespaces",
    ):
        assert one(unit, "Service", key) == "yes", key
    assert one(unit, "Service", "ProtectSystem") == "strict"
    assert one(unit, "Service", "SystemCallArchitectures") == "native"
    assert one(unit, "Service", "CapabilityBoundingSet") == ""
    # CUDA: the GPU nodes stay reachable (no PrivateDevices) and W+X pages allowed (JIT, PyTorch)
    assert service.get("PrivateDevices", ["no"]) == ["no"]
    assert service.get("MemoryDenyWriteExecute", ["no"]) == ["no"]
    assert "~" in one(unit, "Service", "SystemCallFilter")  # a deny list only, never an allow list
    assert one(unit, "Service", "DevicePolicy") == "closed"
    assert set(service["DeviceAllow"]) == {
        "/dev/nvidiactl rw",
        "/dev/nvidia-uvm rw",
        "/dev/nvidia-uvm-tools rw",
        "/dev/nvidia-modeset rw",
        "/dev/nvidia%i rw",
    }
    # Logs: journald, with the <N> priority prefixes daemon/logs.py writes
    assert one(unit, "Service", "StandardOutput") == "journal"
    assert one(unit, "Service", "SyslogIdentifier") == "capture-daemon"
    assert one(unit, "Service", "SyslogLevelPrefix") == "yes"


def test_env_example_parses_and_matches_the_unit(unit):
    # Given the fleet's env file as shipped (placeholders included)
    example = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            example[key.strip()] = value.strip()

    # Then it names only real settings, never the per-instance ones the unit sets
    assert set(example) <= set(DEFAULTS), set(example) - set(DEFAULTS)
    assert "CUDA_VISIBLE_DEVICES" not in example and "DAEMON_WORKER_NAME" not in example
    # and is a valid configuration as it stands
    settings = load_settings({**example, "DAEMON_ENV_FILE": "/dev/null"})
    # with its directories where the unit's StateDirectory= / CacheDirectory= put them
    assert one(unit, "Service", "StateDirectory") == "capture-daemon"
    assert one(unit, "Service", "CacheDirectory") == "capture-daemon"
    assert settings.work_dir.is_relative_to("/var/cache/capture-daemon")
    assert settings.state_dir.is_relative_to("/var/lib/capture-daemon")
    assert settings.stop_timeout_s + 30 <= seconds(one(unit, "Service", "TimeoutStopSec"))


# -- systemd's own checks --------------------------------------------------------------------------------

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)"
)


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit and target in tmp_path, with the three host paths verify insists on pointed at real
    ones: ExecStart's binary (this Python), WorkingDirectory and the required EnvironmentFile."""
    (tmp_path / "daemon.env").write_text(ENV_EXAMPLE.read_text())
    text = TEMPLATE.read_text()
    replaced = (
        text.replace("/opt/capture-daemon/.venv/bin/python", sys.executable)
        .replace("WorkingDirectory=/opt/capture-daemon", f"WorkingDirectory={tmp_path}")
        .replace("EnvironmentFile=/etc/capture-daemon/daemon.env", f"EnvironmentFile={tmp_path}/daemon.env")
    )
    changed = [a for a, b in zip(text.splitlines(), replaced.splitlines(), strict=True) if a != b]
    assert len(changed) == 3, changed  # nothing else differs from the shipped file
    (tmp_path / TEMPLATE.name).write_text(replaced)
    shutil.copy(TARGET, tmp_path / TARGET.name)
    return tmp_path


def verify(*units: Path) -> tuple[int, list[str]]:
    """`systemd-analyze verify`: exit code and the stderr lines about our units. systemd also reports on
    units of the host it happens to load (none on a clean Debian 12); lines that name neither our
    directory nor a capture-daemon unit are such host noise and are left out."""
    proc = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", *map(str, units)], capture_output=True, text=True, timeout=30
    )
    ours = [
        line for line in proc.stderr.splitlines() if str(units[0].parent) in line or "capture-daemon" in line
    ]
    return proc.returncode, ours


@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_the_unit_and_target(unit_copy):
    # When systemd loads instance 0 of the template, and the target
    code, warnings = verify(unit_copy / "capture-daemon@0.service", unit_copy / "capture-daemon.target")

    # Then it has nothing to say about them
    assert code == 0
    assert warnings == []


@needs_systemd_analyze
def test_systemd_analyze_verify_would_catch_a_mistake(unit_copy):
    # Given a typo in the unit (the check above is only worth something if it can fail)
    path = unit_copy / TEMPLATE.name
    path.write_text(path.read_text().replace("WatchdogSec=", "WatchdogSecs="))

    # When / Then
    _, warnings = verify(unit_copy / "capture-daemon@0.service")
    assert any("Unknown key 'WatchdogSecs'" in line for line in warnings)


@needs_systemd_analyze
def test_systemd_analyze_security_rates_the_unit_well_exposed_below_2_5(unit_copy):
    # systemd's exposure score: 10 = unprotected, 0 = fully sandboxed; this unit scores 1.9 ("OK") with
    # systemd 252; --threshold is the score × 10.
    proc = subprocess.run(
        [str(SYSTEMD_ANALYZE), "security", "--offline=yes", "--threshold=25", "--no-pager"]
        + [str(unit_copy / "capture-daemon@0.service")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert "Overall exposure level for capture-daemon@0.service" in proc.stdout


MEMORY_SHARE = UNIT_DIR / "memory-share.sh"


def memory_share(tmp_path: Path, gpus: str, total_kb: int) -> subprocess.CompletedProcess[str]:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal:       {total_kb} kB\nMemFree:        1000 kB\n")
    return subprocess.run(
        ["bash", str(MEMORY_SHARE), gpus],
        env={**os.environ, "MEMINFO": str(meminfo)},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_each_gpu_worker_gets_an_equal_share_of_the_memory(tmp_path):
    # Given a 64,000 MiB machine with 4 GPUs (user data runs this at boot, one drop-in for the template)
    done = memory_share(tmp_path, "4", 64_000 * 1024)
    # Then each worker's unit may use a quarter of it, after 2 GiB kept for the system
    assert done.returncode == 0, done.stderr
    assert "[Service]\nMemoryMax=15488M\n" in done.stdout
    # And nonsense is refused rather than written as a limit
    assert memory_share(tmp_path, "0", 64_000 * 1024).returncode == 2
    assert memory_share(tmp_path, "4", 4_000 * 1024).returncode == 2  # under 1 GiB each


def test_the_script_that_shares_memory_passes_shellcheck():
    done = subprocess.run(["shellcheck", str(MEMORY_SHARE)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout


@needs_systemd_analyze
def test_systemd_accepts_the_memory_limit_in_the_unit(unit_copy, tmp_path):
    # Given instance 0 of the unit with the generated limit in its [Service] section (as the drop-in adds it)
    done = memory_share(tmp_path, "1", 32_000 * 1024)
    limit = done.stdout.split("[Service]\n", 1)[1]
    template = unit_copy / TEMPLATE.name
    template.write_text(template.read_text().replace("[Service]\n", f"[Service]\n{limit}", 1))
    assert "MemoryMax=" in template.read_text()
    # When systemd loads it, Then it has nothing to say
    code, warnings = verify(unit_copy / "capture-daemon@0.service")
    assert code == 0 and warnings == []
