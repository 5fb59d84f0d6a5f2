"""Test fixtures are split by concern into tests/fixtures/*, loaded here as plugins."""

pytest_plugins = [
    "tests.fixtures.infra",
    "tests.fixtures.sandbox",
    "tests.fixtures.processes",
    "tests.fixtures.redis_topologies",
]
