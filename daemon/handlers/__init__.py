"""Job kinds: one module or package per kind, each declaring a `Handler` (base.py); the registry of
them and the parsing of a job against them (registry.py); content sniffing shared by kinds (sniff.py).

Handlers never import the daemon's adapters, worker or fleet: what they may use of the world comes in
through the context the runner hands them.
"""

from .registry import input_limits, params_models, parse_job, peek_kind, registry

__all__ = ["input_limits", "params_models", "parse_job", "peek_kind", "registry"]
