"""`python -m daemon …`: the worker and the operator's commands."""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import sys
from pathlib import Path
from typing import Any

from .config import Settings, load_settings, secret_values
from .errors import ConfigError, SpecError
from .logs import setup_logging

log = logging.getLogger("daemon")


def _settings_and_logs(*, to_stdout: bool = False) -> Settings:
    settings = load_settings()
    setup_logging(
        settings.log_level,
        secrets=secret_values(settings).values(),
        stream=sys.stdout if to_stdout else sys.stderr,
    )
    return settings


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings_and_logs(to_stdout=True)
    from .telemetry.sentry import init_sentry
    from .worker.rq_worker import DaemonWorker

    init_sentry(settings)
    # A watchdog abort (SIGABRT) then prints every thread's stack to the journal: where the loop hung.
    faulthandler.enable()
    worker = DaemonWorker(settings)
    log.info(
        "worker %s serving %s (storage=%s, rows=%s)",
        settings.worker_name,
        ",".join(settings.queues),
        settings.storage_backend,
        "supabase" if settings.supabase_enabled else "local",
    )
    worker.work(burst=args.burst, logging_level=settings.log_level.upper(), max_jobs=args.max_jobs)
    return 0


def _read_spec(source: str) -> Any:
    text = (
        sys.stdin.read()
        if source == "-"
        else (source if source.lstrip().startswith("{") else Path(source).read_text())
    )
    return text


def cmd_enqueue(args: argparse.Namespace) -> int:
    settings = _settings_and_logs()
    from .adapters.runtime import Runtime
    from .handlers.registry import parse_job
    from .spec.tenancy import Roots
    from .worker.queue import enqueue

    spec = parse_job(_read_spec(args.spec))
    runtime = Runtime.for_this_process(settings)
    job = enqueue(runtime.redis, spec, priority=args.priority, roots=Roots.of(settings))
    print(json.dumps({"job_id": spec.job_id, "queue": job.origin, "kind": spec.kind}))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    settings = _settings_and_logs()
    from .adapters.runtime import Runtime
    from .worker.cancel import cancel_job

    outcome = cancel_job(Runtime.for_this_process(settings), args.job_id, wait_s=args.wait)
    print(json.dumps({"job_id": args.job_id, "result": outcome}))
    return 0 if outcome != "unknown" else 1


def cmd_status(args: argparse.Namespace) -> int:
    settings = _settings_and_logs()
    from .adapters.runtime import Runtime

    runtime = Runtime.for_this_process(settings)
    entry = runtime.ledger.get(args.job_id)
    print(
        json.dumps({"ledger": entry.__dict__, "row": runtime.rows.read(args.job_id)}, indent=2, default=str)
    )
    return 0


def cmd_run_local(args: argparse.Namespace) -> int:
    settings = _settings_and_logs()
    from .attempt.local import run_local
    from .handlers.registry import parse_job

    spec = parse_job(_read_spec(args.spec))
    ended = run_local(
        settings,
        spec,
        workdir=Path(args.workdir).absolute() if args.workdir else None,
        out_dir=Path(args.out).absolute() if args.out else None,
        until=args.until,
    )
    print(json.dumps(ended, indent=2, sort_keys=True))
    return 0 if ended["status"] in ("completed", "stopped") else 1


def cmd_drain(args: argparse.Namespace) -> int:
    settings = _settings_and_logs()
    from dataclasses import asdict

    from .adapters.runtime import redis_client
    from .worker.drain import drain

    report = drain(
        redis_client(settings.redis_url),
        args.pid,
        finish_timeout_s=args.timeout,
        checkpoint=args.checkpoint,
        stop=args.stop,
        stop_timeout_s=settings.stop_timeout_s + 60,
    )
    print(json.dumps(asdict(report), sort_keys=True))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from .handlers.registry import input_limits, params_models
    from .spec.schema import render_schema

    sys.stdout.write(render_schema(params_models(), input_limits()))
    return 0


def config_table() -> str:
    """The README's configuration table, generated from the settings' own docs."""
    from .config import VARIABLES

    lines = ["| Variable | Default | What it sets |", "| --- | --- | --- |"]
    for var in VARIABLES:
        default = f"`{var.default}`" if var.default else "(unset)"
        lines.append(f"| `{var.name}` | {default} | {var.doc} |")
    return "\n".join(lines) + "\n"


def cmd_config_doc(args: argparse.Namespace) -> int:
    sys.stdout.write(config_table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m daemon", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="run the worker (one per GPU)")
    worker.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    worker.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
    worker.set_defaults(func=cmd_worker)

    enqueue = sub.add_parser("enqueue", help="validate a job spec and put it on its queue")
    enqueue.add_argument("spec", help="a spec file, '-' for stdin, or the JSON itself")
    enqueue.add_argument("--priority", choices=("high", "default", "low"), default=None)
    enqueue.set_defaults(func=cmd_enqueue)

    cancel = sub.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job_id")
    cancel.add_argument(
        "--wait",
        type=float,
        default=10.0,
        help="seconds to let a running job stop by itself before it is killed",
    )
    cancel.set_defaults(func=cmd_cancel)

    status = sub.add_parser("status", help="show a job's ledger entry and progress row")
    status.add_argument("job_id")
    status.set_defaults(func=cmd_status)

    local = sub.add_parser(
        "run-local", help="run one job in this process: no queue, Redis, Supabase or callbacks"
    )
    local.add_argument("spec", help="a spec file, '-' for stdin, or the JSON itself")
    local.add_argument(
        "--workdir", help="keep the work folder here; a rerun over it skips the stages that finished"
    )
    local.add_argument("--out", help="store outputs in this directory instead of where the spec says")
    local.add_argument("--until", metavar="STAGE", help="stop after this stage (e.g. sfm)")
    local.set_defaults(func=cmd_run_local)

    drain = sub.add_parser(
        "drain", help="stop workers of this host taking jobs; wait for their jobs (or checkpoint them)"
    )
    drain.add_argument("--pid", type=int, action="append", required=True, help="a worker's pid (repeat)")
    drain.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds to wait for running jobs to finish"
    )
    drain.add_argument(
        "--checkpoint", action="store_true", help="don't wait: running jobs checkpoint and are requeued"
    )
    drain.add_argument(
        "--stop", action="store_true", help="then stop the workers (SIGTERM); not under systemd"
    )
    drain.set_defaults(func=cmd_drain)

    schema = sub.add_parser("schema", help="print the JSON Schema of the job spec")
    schema.set_defaults(func=cmd_schema)

    config_doc = sub.add_parser("config-doc", help="print the configuration table of the README")
    config_doc.set_defaults(func=cmd_config_doc)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 78  # EX_CONFIG: systemd shows it, and RestartPreventExitStatus can stop a restart loop
    except SpecError as exc:
        print(f"job refused: {exc}", file=sys.stderr)
        return 65  # EX_DATAERR
