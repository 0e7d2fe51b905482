"""The public name of the daemon's one entry point: `daemon.entry.run_job`.

Producers write this name into every job's data in Redis (`python -m daemon enqueue`, the Node example,
`rq enqueue daemon.entry.run_job`), so it never moves; the code is in daemon/attempt/entry.py. Nothing
in the daemon imports this module: rq imports it by that name once the worker's job guard has checked it.
"""

from .attempt.entry import configure, run_job

__all__ = ["configure", "run_job"]
