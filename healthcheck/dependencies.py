"""What /health and /metrics probe: the settings and the stores' clients, built once per process."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from sqlalchemy import Engine

from healthcheck import probes
from shared.config import Settings
from shared.connections import database_engine, redis_client
from shared.servertime import server_now


@dataclass
class Dependencies:
    """What the probes talk to; built once per process, connections opened lazily."""

    settings: Settings
    redis: redis.Redis
    engine: Engine
    flights: probes.Flights
    timeout: float

    @classmethod
    def build(cls, settings: Settings, timeout: float) -> Dependencies:
        return cls(
            settings=settings,
            redis=redis_client(settings.redis, socket_timeout=timeout),
            engine=database_engine(settings.database_url, connect_timeout=timeout, pooled=False),
            flights=probes.Flights(),
            timeout=timeout,
        )

    def probe(self, now: float) -> dict[str, probes.Probe]:
        """Database, Redis and the runbook's queue/replay probe, side by side, within the budget."""
        secrets = self.settings.secrets()
        channel = self.settings.events.channel
        queue = self.settings.queue_name
        bodies = {
            "database": lambda: probes.timed(lambda: probes.ping_database(self.engine), secrets),
            "redis": lambda: probes.timed(lambda: probes.ping_redis(self.redis), secrets),
            "integrations": lambda: probes.timed(
                # The heartbeat was stamped by Redis's clock, so its age is judged by it too.
                lambda: probes.replay_storage(self.redis, queue, channel, server_now(self.redis)),
                secrets,
            ),
        }
        return self.flights.run(bodies, self.timeout)
