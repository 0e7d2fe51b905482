"""Test session wiring: each area's real-server fixtures live in a plugin module of its own."""

pytest_plugins = [
    "tests.fixtures_servers",
    "tests.fixtures_s3",
    "tests.fixtures_webhooks",
    "tests.fixtures_daemon",
]
