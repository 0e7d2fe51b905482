"""The map in ARCHITECTURE.md stays true: the import contracts hold, the parts stay shallow and acyclic,
modules stay short, and the worker's parent never loads the training stack."""

from __future__ import annotations

import subprocess
import sys
from functools import cache
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
DAEMON = ROOT / "daemon"

MAX_LINES = 400
"""A module longer than this says why in its docstring ("Long on purpose: …")."""

MAX_PART_CHAIN = 8
"""Longest chain of imports between the daemon's parts (its subpackages and root modules). It was 16
when daemon/ was 40 flat modules; a ninth floor means a new accidental link."""


def test_the_import_contracts_hold():
    # Given the contracts in pyproject.toml ([tool.importlinter]), when import-linter checks the package
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    # Then every contract is kept (its output names the import that broke one)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


@cache
def _graph() -> grimp.ImportGraph:
    return grimp.build_graph("daemon", cache_dir=None)


def _part(module: str) -> str:
    """daemon.worker.queue → daemon.worker; daemon.config → daemon.config."""
    return ".".join(module.split(".")[:2])


def _longest_chain(edges: dict[str, set[str]]) -> list[str]:
    memo: dict[str, list[str]] = {}

    def longest_from(node: str, seen: frozenset[str]) -> list[str]:
        if node in memo:
            return memo[node]
        best = [node]
        for nxt in sorted(edges.get(node, ())):
            if nxt not in seen:
                chain = [node, *longest_from(nxt, seen | {nxt})]
                best = chain if len(chain) > len(best) else best
        memo[node] = best
        return best

    return max((longest_from(n, frozenset({n})) for n in sorted(edges)), key=len)


def test_the_parts_of_the_daemon_stay_shallow():
    # Given the import graph between the daemon's parts (a subpackage or a root module each)
    graph = _graph()
    edges: dict[str, set[str]] = {}
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if _part(imported) != _part(module):
                edges.setdefault(_part(module), set()).add(_part(imported))
    # When we follow the longest chain of imports between them
    chain = _longest_chain(edges)
    # Then it is at most MAX_PART_CHAIN parts long
    assert len(chain) <= MAX_PART_CHAIN, " -> ".join(chain)


def test_modules_are_short_or_say_why():
    # Given every module of the daemon, handlers included
    too_long = []
    for path in sorted(DAEMON.rglob("*.py")):
        text = path.read_text()
        # Then each is at most MAX_LINES lines, or its docstring states why it is longer
        if text.count("\n") > MAX_LINES and "Long on purpose:" not in text.split('"""')[1]:
            too_long.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    assert not too_long, too_long


@pytest.mark.parametrize("stack", ["torch", "gsplat", "pycolmap", "av"])
def test_the_worker_parent_never_loads_the_training_stack(stack):
    # Given a fresh interpreter that imports what the worker's parent runs and builds the registry
    code = (
        "import sys\n"
        "import daemon.cli, daemon.worker.rq_worker, daemon.worker.drain, daemon.worker.cancel\n"
        "from daemon.handlers.registry import parse_job, registry\n"
        "registry()\n"
        f"print({stack!r} in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    # Then the heavy stack was not imported (it loads only in a work-horse, inside a handler's run)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
