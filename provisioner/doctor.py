"""`provisioner doctor [--order ID] [--json]`: the runbook's checklist, walked by the software.

Each check is a small function returning a Verdict; the runner names it, skips it (as failed)
when a check it builds on failed, and never lets one crash the others. Exit status 1 when any
line failed, so scripts and CI can gate on it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

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
    ok: bool
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Result:
    """One checklist line: the record `--json` prints."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


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
    results: dict[str, Result] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)  # what one check hands the next
    _redis: redis.Redis | None = None
    _engine: Engine | None = None
    _tokens: DoctorTokens | None = None
    _salesforce: SalesforceClient | None = None
    _whmcs: WhmcsClient | None = None

    @property
    def s(self) -> Settings:
        assert self.settings is not None, "checks run only with core settings"
        return self.settings

    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis_client(self.s.redis, socket_timeout=STORE_TIMEOUT)
        return self._redis

    def engine(self) -> Engine:
        if self._engine is None:
            url = self.s.database_url
            self._engine = database_engine(url, connect_timeout=STORE_TIMEOUT, pooled=False)
        return self._engine

    def tokens(self) -> DoctorTokens:
        if self._tokens is None:
            self._tokens = DoctorTokens(self.s.salesforce, self.redis(), self.session())
        return self._tokens

    def session(self) -> requests.Session:
        sf = self.s.salesforce
        return TimeoutSession(sf.connect_timeout, sf.timeout)

    def salesforce(self) -> SalesforceClient:
        if self._salesforce is None:
            self._salesforce = SalesforceClient(self.s.salesforce, self.tokens(), self.session())
        return self._salesforce

    def whmcs(self) -> WhmcsClient:
        if self._whmcs is None:
            self._whmcs = WhmcsClient(self.s.whmcs)
        return self._whmcs

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
        if self._engine is not None:
            self._engine.dispose()
        if self._salesforce is not None:
            self._salesforce.close()
        if self._whmcs is not None:
            self._whmcs.close()


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


def run_checks(ctx: Context, checks: Iterable[Check]) -> list[Result]:
    out = []
    for check in checks:
        result = run_one(ctx, check)
        ctx.results[check.name] = result
        out.append(result)
    return out


def run_one(ctx: Context, check: Check) -> Result:
    blocked = _blocked(ctx, check)
    if blocked is not None:
        return Result(check.name, False, f"not checked: {blocked}", f"fix '{blocked}' first")
    try:
        verdict = check.run(ctx)
    except IntegrationError as exc:  # a dependency failed half way through the check
        verdict = failed(str(exc), f"see the {exc.system} checks above; then run the doctor again")
    except Exception as exc:  # one broken check must not hide the rest of the list
        verdict = failed(f"check crashed: {type(exc).__name__}: {exc}", "report this as a bug")
    return Result(check.name, verdict.ok, scrub(verdict.detail), scrub(verdict.fix))


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


# --- the command ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--order", metavar="ORDER_ID", help="diagnose one Salesforce Order")
    parser.add_argument("--json", action="store_true", help="print JSON for machines")


def run(args: argparse.Namespace) -> int:
    from provisioner import doctor_checks, doctor_order

    ctx = load_context()
    try:
        results = run_checks(ctx, doctor_checks.CHECKS)
        if args.order:
            results += run_checks(ctx, doctor_order.checks(args.order))
    finally:
        ctx.close()
    render(results, as_json=args.json, out=sys.stdout)
    return 0 if all(r.ok for r in results) else 1


def render(results: list[Result], *, as_json: bool, out: TextIO) -> None:
    failures = sum(not r.ok for r in results)
    if as_json:
        body = {"ok": failures == 0, "checks": [asdict(r) for r in results]}
        json.dump(body, out, indent=2)
        out.write("\n")
        return
    for r in results:
        out.write(f"[{'PASS' if r.ok else 'FAIL'}] {r.name}: {_indent(r.detail)}\n")
        if not r.ok and r.fix:
            out.write(f"       fix: {_indent(r.fix)}\n")
    out.write(f"\n{len(results) - failures} passed, {failures} failed\n")


def _indent(text: str) -> str:
    return text.replace("\n", "\n       ")
