"""Test fixtures are split by concern into tests/fixtures/*, loaded here as plugins.

Property tests are derandomized (the same examples on every run, on every machine), so CI never
passes or fails on a draw. `HYPOTHESIS_PROFILE=explore` draws fresh examples to hunt for new
failures locally; pin each one found with `@example`.
"""

import os

from hypothesis import settings

settings.register_profile("repro", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repro"))

pytest_plugins = [
    "tests.fixtures.infra",
    "tests.fixtures.sandbox",
    "tests.fixtures.processes",
    "tests.fixtures.redis_topologies",
    "tests.worker_support",  # the `sweeper` and `own_redis` fixtures
]
