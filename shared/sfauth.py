"""Salesforce access tokens: OAuth 2.0 JWT bearer flow, cached in Redis for every process.

A token is minted only when none is cached or when a caller reports the one it used as rejected
(`refresh(stale)`); minting is single-flight across processes (a Redis lock), so a thousand jobs
on four workers share one login instead of making one each. Salesforce caps logins per user per
hour, and an expired token is the normal reason for a 401, not an emergency.

While logins fail (refused, or the token endpoint answers an HTTP error), a provider makes at
most one login attempt per SF_LOGIN_BACKOFF seconds (default 60): in between, asking for a
token fails at once with SF_AUTH. Each process builds one provider, so retries of undelivered
outcomes (the reaper) and a reconnecting subscriber cannot eat the per-user login cap.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import jwt
import redis
import requests

from shared import keys
from shared.config import SalesforceSettings
from shared.errors import AuthError, BadResponse, ConnectionFailed, HttpStatusError, UpstreamTimeout
from shared.http import TimeoutSession
from shared.logs import register_secrets

log = logging.getLogger(__name__)

LOCK_MS = 15_000
WAIT_STEP = 0.05
JWT_LIFETIME = 180  # Salesforce accepts exp at most a few minutes ahead
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)

# What an operator should check for each token-endpoint refusal (the runbook's "connected app
# JWT config"), keyed by a fragment of error or error_description.
HINTS = (
    (
        "approved",
        "pre-authorise the connected app for the API user (admin-approved users, "
        "permission set) and check it is not revoked",
    ),
    (
        "audience",
        "SF_LOGIN_URL (or SF_AUDIENCE) must be https://login.salesforce.com, "
        "https://test.salesforce.com or the community URL",
    ),
    ("expired", "the JWT exp was refused: check this host's clock"),
    ("assertion", "the certificate on the connected app does not match SF_PRIVATE_KEY_PATH"),
    ("client", "SF_CLIENT_ID is not the connected app's consumer key"),
    ("user", "SF_USERNAME is unknown, inactive, locked or outside its login hours/IP ranges"),
)


@dataclass(frozen=True)
class Token:
    access_token: str
    instance_url: str
    # The Pub/Sub API's tenantid, from the token response's identity URL. Not part of a token's
    # identity: "is this the token that was refused" compares the token itself.
    org_id: str = field(default="", compare=False)


def _secret(token: Token) -> Token:
    """A token in use is a secret: scrubbed from every log line of this process, like the
    configured ones, should a reply ever echo it."""
    register_secrets((token.access_token,))
    return token


def hint_for(error: str, description: str) -> str:
    text = f"{error} {description}".lower()
    for fragment, hint in HINTS:
        if fragment in text:
            return hint
    return "check the connected app JWT config (consumer key, certificate, pre-authorised user)"


def org_id_of(identity_url: str) -> str:
    """The org id from the token response's `id`, https://<host>/id/<org id>/<user id>."""
    parts = identity_url.rstrip("/").split("/")
    return parts[-2] if len(parts) >= 3 and parts[-3] == "id" else ""


class TokenProvider:
    def __init__(
        self,
        settings: SalesforceSettings,
        connection: redis.Redis,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
        login_backoff: float | None = None,
    ) -> None:
        self.settings = settings
        self.redis = connection
        self.session = session or TimeoutSession(settings.connect_timeout, settings.timeout)
        self.clock = clock
        self.login_backoff = settings.login_backoff if login_backoff is None else login_backoff
        self._token: Token | None = None
        self._refused: tuple[float, str] | None = None  # (when, why) of the last failed login

    def current(self) -> Token:
        """The shared token, minting one only when no process has one yet."""
        if self._token is None:
            self._token = _secret(self._cached() or self._mint_single_flight(stale=None))
        return self._token

    def refresh(self, stale: Token | None) -> Token:
        """Called after `stale` was rejected: reuse a newer shared token, or mint one."""
        cached = self._cached()
        if cached is not None and cached != stale:
            self._token = _secret(cached)
        else:
            self._token = _secret(self._mint_single_flight(stale))
        return self._token

    def forget(self) -> None:
        self._token = None

    def _cached(self) -> Token | None:
        data = self.redis.hgetall(keys.SF_TOKEN)
        if not data.get(b"access_token"):
            return None
        return Token(
            data[b"access_token"].decode(),
            data[b"instance_url"].decode(),
            data.get(b"org_id", b"").decode(),
        )

    def _mint_single_flight(self, stale: Token | None) -> Token:
        self._check_backoff()
        deadline = self.clock() + 2 * LOCK_MS / 1000
        holder = uuid.uuid4().hex
        while True:
            if self.redis.set(keys.SF_TOKEN_LOCK, holder, nx=True, px=LOCK_MS):
                try:
                    cached = self._cached()
                    if cached is not None and cached != stale:
                        return cached  # another process minted while we queued for the lock
                    return self._mint_and_store()
                finally:
                    self.redis.eval(_RELEASE, 1, keys.SF_TOKEN_LOCK, holder)
            cached = self._cached()
            if cached is not None and cached != stale:
                return cached
            if self.clock() > deadline:
                raise AuthError(
                    "timed out waiting for another process to mint a Salesforce token",
                    system="salesforce",
                    code="SF_AUTH",
                )
            time.sleep(WAIT_STEP)

    def _check_backoff(self) -> None:
        """Refuse at once, without a login, within LOGIN_BACKOFF of a failed one."""
        if self._refused is None:
            return
        at, why = self._refused
        if self.clock() - at < self.login_backoff:
            raise AuthError(
                f"{why} (no new login attempt before {self.login_backoff:.0f} s have passed)",
                system="salesforce",
                code="SF_AUTH",
            )

    def _mint_and_store(self) -> Token:
        try:
            token = self.mint()
        except (AuthError, HttpStatusError) as exc:
            self._refused = (self.clock(), exc.message)
            raise
        self._refused = None
        self.redis.hset(
            keys.SF_TOKEN,
            mapping={
                "access_token": token.access_token,
                "instance_url": token.instance_url,
                "org_id": token.org_id,
                "minted_at": f"{self.clock():.3f}",
            },
        )
        self.redis.incr(keys.SF_TOKEN_MINTS)
        return token

    def mint(self) -> Token:
        """One JWT bearer login against SF_LOGIN_URL."""
        with open(self.settings.private_key_path, "rb") as fh:
            key = fh.read()
        assertion = jwt.encode(
            {
                "iss": self.settings.client_id,
                "sub": self.settings.username,
                "aud": self.settings.audience,
                "exp": int(self.clock()) + JWT_LIFETIME,
            },
            key,
            algorithm="RS256",
        )
        try:
            reply = self.session.post(
                self.settings.token_url, data={"grant_type": GRANT_TYPE, "assertion": assertion}
            )
        except requests.Timeout as exc:
            raise UpstreamTimeout(
                "Salesforce token endpoint timed out", system="salesforce"
            ) from exc
        except requests.RequestException as exc:
            raise ConnectionFailed(
                f"Salesforce token endpoint unreachable: {type(exc).__name__}", system="salesforce"
            ) from exc
        return self._parse(reply)

    def _parse(self, reply: requests.Response) -> Token:
        try:
            body = reply.json()
        except (ValueError, RecursionError):  # RecursionError: JSON nested too deep to parse
            body = None
        if reply.status_code == 200 and isinstance(body, dict) and body.get("access_token"):
            log.info(
                "Salesforce JWT login succeeded", extra={"instance_url": body.get("instance_url")}
            )
            return Token(
                str(body["access_token"]),
                str(body.get("instance_url", "")),
                org_id_of(str(body.get("id", ""))),
            )
        if isinstance(body, dict) and "error" in body:
            error, description = str(body["error"]), str(body.get("error_description", ""))
            hint = hint_for(error, description)
            log.error(
                "Salesforce JWT login failed",
                extra={"error": error, "error_description": description, "hint": hint},
            )
            raise AuthError(
                f"Salesforce login refused: {error}: {description} ({hint})",
                system="salesforce",
                code="SF_AUTH",
                status=reply.status_code,
            )
        if reply.status_code >= 400:
            raise HttpStatusError(
                f"Salesforce token endpoint answered HTTP {reply.status_code}",
                system="salesforce",
                status=reply.status_code,
            )
        raise BadResponse("Salesforce token endpoint answered without a token", system="salesforce")
