"""The Salesforce REST calls we make (query, update, describe), with failures mapped to errors.py.

Built on simple-salesforce in its "direct" mode: it is handed the shared token from
`shared.sfauth.TokenProvider` and never logs in by itself. A 401 means "the token expired": ask
the provider for a fresh one (`refresh(stale)`, single-flight across processes) and retry once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceError,
    SalesforceExpiredSession,
    SalesforceRefusedRequest,
)

from shared.config import SalesforceSettings
from shared.errors import (
    AuthError,
    BadResponse,
    ConnectionFailed,
    HttpStatusError,
    IntegrationError,
    UpstreamTimeout,
)
from shared.http import TimeoutSession
from shared.sfauth import Token, TokenProvider
from shared.sfid import is_valid_id

log = logging.getLogger(__name__)

SYSTEM = "salesforce"
T = TypeVar("T")


class SalesforceClient:
    """One object per job (or per reaper pass); cheap to build, holds one keep-alive session."""

    def __init__(
        self,
        settings: SalesforceSettings,
        tokens: TokenProvider,
        session: requests.Session | None = None,
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.session = session or TimeoutSession(settings.connect_timeout, settings.timeout)
        # simple-salesforce turns a 401 with a body that is not a JSON list into KeyError,
        # TypeError or JSONDecodeError in some code paths; remembering the last status lets us
        # still call it what it is.
        self._last_status: int | None = None
        self.session.hooks["response"].append(self._remember_status)
        self._api: tuple[Token, Salesforce] | None = None

    def query(self, soql: str) -> list[dict[str, Any]]:
        """Every record the SOQL selects (following nextRecordsUrl), as plain dicts."""
        result: dict[str, Any] = self._call("query", lambda sf: sf.query(soql))
        records = list(_records(result))
        while not result.get("done", True) and result.get("nextRecordsUrl"):
            result = self.query_more(result["nextRecordsUrl"])
            records.extend(_records(result))
        return records

    def query_more(self, next_records_url: str) -> dict[str, Any]:
        """The next batch of a (child) query result, for `done: false` relationship sets."""
        return self._call("query", lambda sf: sf.query_more(next_records_url, True))

    def update(self, sobject: str, record_id: str, fields: dict[str, Any]) -> None:
        """PATCH one record (204, no body)."""
        if not is_valid_id(record_id, sobject if sobject == "Order" else None):
            raise ValueError(f"refusing to PATCH {sobject} with a malformed id")
        path = f"sobjects/{sobject}/{record_id}"
        self._call("patch", lambda sf: sf.restful(path, method="PATCH", json=fields))

    def describe(self, sobject: str) -> dict[str, Any]:
        result = self._call("describe", lambda sf: sf.restful(f"sobjects/{sobject}/describe"))
        if not isinstance(result, dict):
            raise BadResponse(f"Salesforce describe {sobject}: no JSON object", system=SYSTEM)
        return result

    def close(self) -> None:
        self.session.close()

    # --- the boundary: every simple-salesforce/requests failure becomes a shared.errors class ---

    def _call(self, op: str, fn: Callable[[Salesforce], T]) -> T:
        token = self.tokens.current()
        try:
            return self._once(op, fn, token)
        except _Expired:
            log.info("Salesforce token rejected; refreshing", extra={"operation": op})
        token = self.tokens.refresh(token)
        try:
            return self._once(op, fn, token)
        except _Expired as exc:
            raise AuthError(
                f"Salesforce {op}: HTTP 401 {exc.detail} (after a token refresh)",
                system=SYSTEM,
                code="401",
                status=401,
            ) from exc

    def _once(self, op: str, fn: Callable[[Salesforce], T], token: Token) -> T:
        self._last_status = None
        try:
            return fn(self._client(token))
        except SalesforceExpiredSession as exc:
            raise _Expired(_hidden(_detail(exc.content), token)) from exc
        except SalesforceError as exc:
            raise _status_error(op, exc, token) from exc
        except (
            requests.JSONDecodeError,
            KeyError,
            TypeError,
            IndexError,
            ValueError,
            RecursionError,
        ) as exc:
            # requests' JSONDecodeError is also a RequestException: it must be caught first.
            # json raises RecursionError (not ValueError) for a body nested too deep to parse.
            if self._last_status == 401:
                raise _Expired("(body was not a JSON error list)") from exc
            raise BadResponse(
                f"Salesforce {op}: unreadable reply (HTTP {self._last_status})", system=SYSTEM
            ) from exc
        except requests.Timeout as exc:
            raise UpstreamTimeout(f"Salesforce {op} timed out", system=SYSTEM) from exc
        except requests.RequestException as exc:
            raise ConnectionFailed(
                f"Salesforce {op}: connection failed ({type(exc).__name__})", system=SYSTEM
            ) from exc

    def _client(self, token: Token) -> Salesforce:
        if self._api is None or self._api[0] != token:
            api = Salesforce(
                instance_url=token.instance_url,
                session_id=token.access_token,
                version=self.settings.api_version,
                session=self.session,
                object_pairs_hook=dict,
            )
            self._api = (token, api)
        return self._api[1]

    def _remember_status(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self._last_status = response.status_code


class _Expired(Exception):
    """Internal: a 401 from the REST API; `_call` refreshes the token once on it."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _records(result: Any) -> list[dict[str, Any]]:
    if not isinstance(result, dict) or not isinstance(result.get("records"), list):
        raise BadResponse("Salesforce query reply has no records list", system=SYSTEM)
    return result["records"]


def _detail(content: Any) -> str:
    """`errorCode: message` of the first error of a Salesforce error body, whatever its shape."""
    if isinstance(content, list) and content and isinstance(content[0], dict):
        first = content[0]
        return f"{first.get('errorCode', '')}: {first.get('message', '')}".strip(": ")
    if isinstance(content, dict):
        return str(content.get("errorCode") or content.get("error") or "")[:80]
    return ""


def _hidden(text: str, token: Token) -> str:
    """Salesforce's error text without our bearer token, should it ever echo it."""
    return text.replace(token.access_token, "***") if token.access_token else text


def _status_error(op: str, exc: SalesforceError, token: Token) -> IntegrationError:
    status = int(exc.status)
    detail = _hidden(_detail(exc.content), token)
    message = f"Salesforce {op}: HTTP {status} {detail}".strip()
    if isinstance(exc, SalesforceRefusedRequest) and "REQUEST_LIMIT_EXCEEDED" not in detail:
        return AuthError(message, system=SYSTEM, code="403", status=403)
    return HttpStatusError(message, system=SYSTEM, status=status)
