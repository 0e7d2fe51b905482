"""What an operator's drain and the worker agree on, without importing the worker: the signal that
drains it and the field of rq's worker hash where it publishes its current job."""

from __future__ import annotations

import signal

CURRENT_JOB_FIELD = "daemon_current_job"
"""Field of rq's worker hash holding the id of the job this worker runs (rq 3 keeps that in memory only):
what `python -m daemon drain` watches."""

DRAIN_SIGNAL = signal.SIGRTMIN + 2
"""Sent by an operator (scripts/drain_instance.sh): stop taking jobs, finish the running one, stay idle.
The work-horse's own signals (preempt, cancel, checkpoint) are in daemon/attempt/interrupts.py."""
