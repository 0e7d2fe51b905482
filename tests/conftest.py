"""Test session wiring: each area's real-server fixtures live in a plugin module of its own."""

import os

# Before anything imports torch: idle OpenMP threads sleep instead of spinning, which on a shared
# 2-core machine is the difference between 0.05 s and 2.5 s per CPU render (see splat/__init__.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

pytest_plugins = [
    "tests.fixtures_servers",
    "tests.fixtures_s3",
    "tests.fixtures_webhooks",
    "tests.fixtures_daemon",
    "tests.fixtures_imds",
]
