"""The doctor's checklist kit: a Check is a named function returning a Verdict; the runner skips
it (as failed) when a check it builds on failed, and never lets one crash the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import redis
import requests
from sqlalchemy import Engine

from shared.config import GROUPS, Settings, load_from_environment
from shared.connections import database_engine, redis_client
from shared.errors import ConfigError, IntegrationError
from shared.http import TimeoutSession
from shared.logs import register_secrets, scrub
from shared.salesforce import SalesforceClient
from shared.sfauth import Token, TokenProvider
from shared.whmcs import WhmcsClient

# The doctor waits a little longer than /health: it is run by a human, once.
STORE_TIMEOUT = 3.0


@dataclass(frozen=True)
class Verdict:
    """One checklist line: what a check found and, when it failed, the runbook's fix."""

    ok: bool
    detail: str
    fix: str = ""
    name: str = ""  # the check's, set by the runner


def passed(detail: str) -> Verdict:
    return Verdict(True, detail)


def failed(detail: str, fix: str) -> Verdict:
    return Verdict(False, detail, fix)


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[Context], Verdict]
    groups: tuple[str, ...] = ()  # settings groups it needs
    after: tuple[str, ...] = ()  # checks that must have passed first
    offline: bool = False  # runs even without settings (it reports on the settings themselves)


class DoctorTokens(TokenProvider):
    """The doctor's own JWT login: it never reads or replaces the token the services share."""

    def current(self) -> Token:
        if self._token is None:
            self._token = self.mint()
        return self._token

    def refresh(self, stale: Token | None) -> Token:
        self._token = self.mint()
        return self._token


@dataclass
class Context:
    """What the checks share: settings, the config problems per group, clients built lazily."""

    settings: Settings | None
    problems: dict[str, list[str]]
    now: float = field(default_factory=time.time)
    results: dict[str, Verdict] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)  # what one check hands the next

    @property
    def s(self) -> Settings:
        assert self.settings is not None, "checks run only with core settings"
        return self.settings

    @cached_property
    def redis(self) -> redis.Redis:
        return redis_client(self.s.redis, socket_timeout=STORE_TIMEOUT)

    @cached_property
    def engine(self) -> Engine:
        return database_engine(self.s.database_url, connect_timeout=STORE_TIMEOUT, pooled=False)

    @cached_property
    def tokens(self) -> DoctorTokens:
        return DoctorTokens(self.s.salesforce, self.redis, self.session())

    def session(self) -> requests.Session:
        sf = self.s.salesforce
        return TimeoutSession(sf.connect_timeout, sf.timeout)

    @cached_property
    def salesforce(self) -> SalesforceClient:
        return SalesforceClient(self.s.salesforce, self.tokens, self.session())

    @cached_property
    def whmcs(self) -> WhmcsClient:
        return WhmcsClient(self.s.whmcs)

    def close(self) -> None:
        """Close the clients built (a cached_property not yet read is not in vars(self))."""
        built = vars(self)
        if "engine" in built:
            self.engine.dispose()
        for name in ("redis", "salesforce", "whmcs"):
            if name in built:
                built[name].close()


def load_context() -> Context:
    """Settings of every group; a bad group is recorded, not fatal, so the rest is checked."""
    problems: dict[str, list[str]] = {}
    for group in sorted(GROUPS):
        try:
            load_from_environment({group})
        except ConfigError as exc:
            problems[group] = exc.problems
    settings = None if "core" in problems else load_from_environment(())
    if settings is not None:
        register_secrets(settings.secrets())
    return Context(settings, problems)


def run_checks(ctx: Context, checks: Sequence[Check]) -> list[Verdict]:
    for check in checks:
        ctx.results[check.name] = run_one(ctx, check)
    return [ctx.results[check.name] for check in checks]


def run_one(ctx: Context, check: Check) -> Verdict:
    blocked = _blocked(ctx, check)
    if blocked is not None:
        return Verdict(False, f"not checked: {blocked}", f"fix '{blocked}' first", check.name)
    try:
        verdict = check.run(ctx)
    except IntegrationError as exc:  # a dependency failed half way through the check
        verdict = failed(str(exc), f"see the {exc.system} checks above; then run the doctor again")
    except Exception as exc:  # one broken check must not hide the rest of the list
        verdict = failed(f"check crashed: {type(exc).__name__}: {exc}", "report this as a bug")
    return Verdict(verdict.ok, scrub(verdict.detail), scrub(verdict.fix), check.name)


def _blocked(ctx: Context, check: Check) -> str | None:
    if ctx.settings is None and not check.offline:
        return "configuration"
    if any(group in ctx.problems for group in check.groups):
        return "configuration"
    for name in check.after:
        prior = ctx.results.get(name)
        if prior is None or not prior.ok:
            return name
    return None
