"""The emulator's OAuth 2.0 JWT bearer token endpoint and the store of access tokens it mints.

Checks run in Salesforce's order: grant type, the connected app named by `iss`, the signature
against that app's certificate (RS256 only), `aud`, `exp` (future, at most a few minutes ahead),
then whether the user `sub` may use the app. Refusals are HTTP 400 with Salesforce's
`{"error", "error_description"}` pairs.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any
from urllib.parse import parse_qs

import jwt

from sandbox.http_server import Request, Response

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_EXP_AHEAD = 300  # seconds; Salesforce wants exp within a few minutes of now

REFUSALS = {
    "grant_type": ("unsupported_grant_type", "grant type not supported"),
    "client": ("invalid_client_id", "client identifier invalid"),
    "assertion": ("invalid_grant", "invalid assertion"),
    "audience": ("invalid_grant", "audience is invalid"),
    "expired": ("invalid_grant", "expired authorization code"),
    "approval": ("invalid_grant", "user hasn't approved this consumer"),
}


class Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.error, self.description = REFUSALS[reason]


class Tokens:
    """Access tokens minted by logins; all of them can be revoked at once."""

    def __init__(self, org_id: str) -> None:
        self.org_id = org_id
        self._lock = threading.Lock()
        self._valid: set[str] = set()

    def mint(self) -> str:
        # Salesforce's look: the 15-character org id, "!", an opaque session part.
        token = f"{self.org_id[:15]}!{secrets.token_urlsafe(72)}"
        with self._lock:
            self._valid.add(token)
        return token

    def is_valid(self, token: str | None) -> bool:
        with self._lock:
            return token in self._valid

    def revoke_all(self) -> None:
        with self._lock:
            self._valid.clear()


def form(request: Request) -> dict[str, str]:
    """The urlencoded form fields; any other content type carries none, as for Salesforce."""
    content_type = request.header("Content-Type").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return {}
    fields = parse_qs(request.body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


def _expiry_ok(exp: Any, now: float) -> bool:
    # simple-salesforce sends exp as a string of seconds; Salesforce takes both forms.
    try:
        value = float(exp)
    except (TypeError, ValueError):
        return False
    return now < value <= now + MAX_EXP_AHEAD


@dataclass(eq=False)
class TokenEndpoint:
    tokens: Tokens
    public_key: bytes  # the connected app's certificate key, PEM
    _: KW_ONLY
    client_id: str
    username: str
    user_id: str
    clock: Callable[[], float] = time.time
    approved: bool = True
    logins: int = 0
    refusals: int = 0

    def handle(self, request: Request, base_url: str) -> Response:
        if request.method != "POST":
            return Response.json(
                {"error": "invalid_request", "error_description": "must use HTTP POST"}, 400
            )
        try:
            self.check(form(request), audience=base_url)
        except Refused as refused:
            self.refusals += 1
            return Response.json(
                {"error": refused.error, "error_description": refused.description}, 400
            )
        self.logins += 1
        return Response.json(self.grant(base_url))

    def check(self, fields: dict[str, str], *, audience: str) -> None:
        if fields.get("grant_type") != GRANT_TYPE:
            raise Refused("grant_type")
        assertion = fields.get("assertion", "")
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise Refused("assertion") from exc
        if unverified.get("iss") != self.client_id:
            raise Refused("client")
        claims = self.verify(assertion)
        if claims.get("aud") != audience:
            raise Refused("audience")
        if not _expiry_ok(claims.get("exp"), self.clock()):
            raise Refused("expired")
        if claims.get("sub") != self.username or not self.approved:
            raise Refused("approval")

    def verify(self, assertion: str) -> dict[str, Any]:
        """The claims, if the app's certificate signed them with RS256; aud/exp are ours."""
        try:
            return jwt.decode(
                assertion,
                self.public_key,
                algorithms=["RS256"],
                options={f"verify_{claim}": False for claim in ("aud", "exp", "iat", "nbf")},
            )
        except jwt.PyJWTError as exc:
            raise Refused("assertion") from exc

    def grant(self, base_url: str) -> dict[str, str]:
        return {
            "access_token": self.tokens.mint(),
            "scope": "api",
            "instance_url": base_url,
            "id": f"{base_url}/id/{self.tokens.org_id}/{self.user_id}",
            "token_type": "Bearer",
            "issued_at": str(int(self.clock() * 1000)),
        }
