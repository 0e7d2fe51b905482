"""What a forged job names: a real, importable module whose import leaves a mark.

Importing it writes the file named by `FORGED_PAYLOAD_MARKER` (a test's temporary path), and calling
`payload`/`hook` appends to it. A test that forges a job naming this module asserts the file is absent:
proof, in any process, that the guard refused the name before Python imported anything. (A module that
does not exist proves nothing: a failed import leaves no trace either.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

MARKER_ENV = "FORGED_PAYLOAD_MARKER"


def _mark(what: str) -> None:
    path = os.environ.get(MARKER_ENV)
    if path:
        with Path(path).open("a") as out:
            out.write(what + "\n")


_mark("imported")


def payload(*args: Any, **kwargs: Any) -> str:
    _mark("ran")
    return "pwned"


def hook(*args: Any, **kwargs: Any) -> None:
    _mark("hook ran")
