"""A private PostgreSQL cluster for tests, with Supabase's roles and the repo's migrations applied.

The cluster lives in a temp dir, listens on a free loopback port (never the machine's 5432) with its
Unix socket in that temp dir, and runs with durability switched off because it is thrown away.

Running as root: ``initdb`` and ``postgres`` refuse to run as root. When we are root, both are started
as an unprivileged account (``postgres`` if it exists, else ``nobody``) through ``subprocess``'s
``user=``/``group=`` arguments, which call ``setreuid``/``setregid`` in the child before ``exec``. No
``su``/``runuser``/``sudo`` is needed, and the temp dir is ``chown``-ed to that account. We run the
``postgres`` binary directly as our child (not ``pg_ctl start``), so we own its pid and can stop it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

REPO_ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS_DIR = REPO_ROOT / "supabase" / "migrations"
"""Applied in file-name order, as ``supabase db push`` does."""

SUPERUSER = "postgres"
DATABASE = "postgres"
"""Supabase's database is called ``postgres`` too, so migrations see the same name."""

START_TIMEOUT = 30.0
"""Seconds to wait for the server to accept connections (initdb is separate and not timed)."""

STOP_TIMEOUT = 15.0
"""Seconds a fast shutdown (SIGINT) may take before we SIGKILL the postmaster."""

PORT_ATTEMPTS = 3
"""Fresh ports tried when the probed one is taken before the postmaster binds it."""

UNPRIVILEGED_USERS = ("postgres", "nobody")
"""Accounts tried, in order, to own the cluster when the tests run as root."""

# Speed over safety: the cluster dies with the test session.
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "'32MB'",
    "max_connections": "50",
    "timezone": "'UTC'",
    "log_min_messages": "warning",
}

# What the Supabase platform sets up before any project migration runs, reduced to what our migrations
# touch: the API roles (service_role bypasses RLS), default grants on public tables, and ``auth.uid()``
# so policies that call it can be created.
SUPABASE_BOOTSTRAP = """
do $$ begin
  create role anon nologin noinherit;
  create role authenticated nologin noinherit;
  create role service_role nologin noinherit bypassrls;
exception when duplicate_object then null;
end $$;
grant usage on schema public to anon, authenticated, service_role;
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;
create or replace function auth.uid() returns uuid language sql stable as $$
  select nullif(current_setting('request.jwt.claims', true)::json ->> 'sub', '')::uuid
$$;
"""


def find_pg_bindir() -> Path:
    """Where initdb/postgres live: ``$PG_BINDIR``, PATH, then Debian's ``/usr/lib/postgresql/<ver>/bin``."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    on_path = shutil.which("initdb")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if debian:
        return Path(debian[-1]).parent
    raise RuntimeError("PostgreSQL binaries not found: apt-get install postgresql, or set $PG_BINDIR")


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parents[1].name  # /usr/lib/postgresql/<version>/bin/initdb
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> dict[str, Any]:
    """``subprocess`` keyword arguments that drop root to an unprivileged account; empty if not root."""
    if os.geteuid() != 0:
        return {}
    for name in UNPRIVILEGED_USERS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    raise RuntimeError(f"running as root and none of {UNPRIVILEGED_USERS} exists to own the cluster")


class PostgresServer:
    """One private cluster; ``start()`` runs initdb, boots it and applies migrations the first time."""

    def __init__(self, *, migrations_dir: Path = MIGRATIONS_DIR, bindir: Path | None = None) -> None:
        self.migrations_dir = migrations_dir
        self.bindir = bindir or find_pg_bindir()
        self.port = 0
        self.dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._as = _run_as()

    @property
    def dsn(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """A new superuser connection in autocommit mode (callers close it)."""
        return psycopg.connect(self.dsn, autocommit=True, **kwargs)

    def start(self) -> PostgresServer:
        if self._proc is not None and self._proc.poll() is None:
            return self
        first_time = self.dir is None
        if first_time:
            self._initdb()
        if self.port:
            self._launch()  # a restart keeps its port, so clients' DSNs stay valid
        else:
            self._launch_on_free_port()
        if first_time:
            self.apply_migrations()
        return self

    def stop(self) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, disconnect clients, exit)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Stop and delete the cluster."""
        self.stop()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def apply_migrations(self) -> list[str]:
        """Supabase's bootstrap, then every ``*.sql`` migration by name, each in its own transaction."""
        files = sorted(self.migrations_dir.glob("*.sql"))
        with self.connect() as conn:
            conn.execute(SUPABASE_BOOTSTRAP)
            for path in files:
                with conn.transaction():
                    conn.execute(path.read_text())
        return [path.name for path in files]

    # -- internals -------------------------------------------------------------------------------------

    def _initdb(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="test-postgres-"))
        if self._as:
            os.chown(self.dir, self._as["user"], self._as["group"])
        result = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.dir / "data"), "-U", SUPERUSER,
             "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"],
            capture_output=True, text=True, cwd=self.dir, **self._as,
        )  # fmt: skip
        if result.returncode != 0:
            # Most likely as root: the unprivileged owner cannot reach $TMPDIR (e.g. /root/tmp, mode 0700).
            raise RuntimeError(
                f"initdb failed in {self.dir} (run as {self._as or 'ourselves'}):\n{result.stderr}"
            )
        with open(self.dir / "data" / "postgresql.conf", "a") as conf:
            conf.write("\n# test-session settings\n")
            conf.writelines(f"{key} = {value}\n" for key, value in SERVER_SETTINGS.items())

    def _launch_on_free_port(self) -> None:
        """Probe a port and launch; if someone took it in between, the postmaster exits: try another."""
        for _ in range(PORT_ATTEMPTS - 1):
            self.port = free_port()
            try:
                return self._launch()
            except _ExitedAtStartError:
                continue
        self.port = free_port()
        self._launch()

    def _launch(self) -> None:
        assert self.dir is not None
        log_path = self.dir / "postgres.log"
        command = [str(self.bindir / "postgres"), "-D", str(self.dir / "data"),
                   "-p", str(self.port), "-k", str(self.dir)]  # fmt: skip
        with open(log_path, "ab") as log:
            self._proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.dir, **self._as,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise _ExitedAtStartError(f"postgres exited at start; see {log_path}")
            try:
                psycopg.connect(self.dsn, connect_timeout=1).close()
                return
            except psycopg.OperationalError:
                time.sleep(0.05)  # not listening yet, or "the database system is starting up"
        self.stop()
        raise RuntimeError(f"postgres did not accept connections in {START_TIMEOUT}s; see {log_path}")


class _ExitedAtStartError(RuntimeError):
    """The postmaster died while starting (most often: its port was taken); the log says why."""
