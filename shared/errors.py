"""The one exception tree of the project; every error knows the code it writes to Salesforce.

    ProvisioningError                 .code -> Activation_Error_Code__c, str() -> short message
    ├── ConfigError                   bad environment; processes exit 2 without a traceback
    ├── SchemaError                   SCHEMA: the database is not at this release's schema; the
    │                                 processes refuse to start until `provisioner db upgrade`
    ├── OrderError                    the order itself cannot be fulfilled as it stands
    │   ├── InvalidEvent              INVALID_ORDER_ID: the event names no well-formed Order id
    │   ├── OrderNotFound             ORDER_NOT_FOUND
    │   ├── MappingError              UNMAPPED_ACCOUNT, UNMAPPED_PRODUCT, INVALID_BILLING_CYCLE, ...
    │   ├── PaymentMethodMissing      409: the WHMCS client has no pay method
    │   └── WhmcsOrderMismatch        WHMCS_ORDER_MISMATCH: WHMCS_Order_ID__c names no live WHMCS
    │                                 order of this Salesforce order
    ├── IntegrationError              Salesforce or WHMCS did not do what we asked
    │   ├── AuthError                 401 / 403 / SF_AUTH: credentials, token or API role
    │   ├── UpstreamTimeout           ETIMEOUT: for a write, the outcome is unknown, not failed
    │   ├── OutcomeUnknown            WHMCS_OUTCOME_UNKNOWN: an earlier AddOrder got no answer and
    │   │                             may still be running in WHMCS; ordering again must wait
    │   ├── ConnectionFailed          ECONNECTION: refused, reset, TLS
    │   ├── BadResponse               EBADRESPONSE: HTML, truncated JSON, wrong shape
    │   ├── HttpStatusError           the HTTP status itself: 429, 500, 502, 503 ...
    │   └── RemoteError               the API answered with an error message (WHMCS result=error)
    ├── RedisUnavailable              EREDIS: Redis unreachable (order lease, in-flight registry,
    │                                 product cache)
    └── WorkerLost                    WORKER_LOST: the job's worker died; set by the reaper

Library exceptions (requests, redis, simple-salesforce) are wrapped at the client boundary with
`raise ... from exc`, so steps and the orchestrator only ever see this tree.
"""

from __future__ import annotations

MAX_MESSAGE = 255  # Activation_Error_Message__c is a Text(255) field


class ProvisioningError(Exception):
    code = "INTERNAL"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(ProvisioningError):
    """Every problem with the environment at once, one line per variable."""

    code = "CONFIG"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class SchemaError(ProvisioningError):
    """The database schema is not the one this release was written for (shared/db.py check)."""

    code = "SCHEMA"


class OrderError(ProvisioningError):
    pass


class InvalidEvent(OrderError):
    code = "INVALID_ORDER_ID"


class OrderNotFound(OrderError):
    code = "ORDER_NOT_FOUND"


class MappingError(OrderError):
    code = "MAPPING"


class PaymentMethodMissing(OrderError):
    code = "409"


class WhmcsOrderMismatch(OrderError):
    code = "WHMCS_ORDER_MISMATCH"


class IntegrationError(ProvisioningError):
    def __init__(
        self, message: str, *, system: str, code: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.system = system
        self.status = status


class AuthError(IntegrationError):
    code = "SF_AUTH"


class UpstreamTimeout(IntegrationError):
    code = "ETIMEOUT"
    request_sent = True  # False for a connect timeout: nothing went out


class OutcomeUnknown(IntegrationError):
    code = "WHMCS_OUTCOME_UNKNOWN"


class ConnectionFailed(IntegrationError):
    code = "ECONNECTION"
    request_sent = True  # False when the connection failed before the request went out


class BadResponse(IntegrationError):
    code = "EBADRESPONSE"


class HttpStatusError(IntegrationError):
    def __init__(self, message: str, *, system: str, status: int) -> None:
        super().__init__(message, system=system, code=str(status), status=status)


class RemoteError(IntegrationError):
    code = "WHMCS_ERROR"


class RedisUnavailable(ProvisioningError):
    code = "EREDIS"


class WorkerLost(ProvisioningError):
    code = "WORKER_LOST"


def short_message(text: str, secrets: tuple[str, ...] = ()) -> str:
    """One line, no secrets, within 255 UTF-16 units: what Activation_Error_Message__c holds.

    Salesforce measures text fields in UTF-16 code units, so an emoji counts twice.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    line = " ".join(text.split())
    if _utf16_len(line) <= MAX_MESSAGE:
        return line
    while _utf16_len(line) > MAX_MESSAGE - 1:
        line = line[:-1]
    return line + "…"


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def transient(exc: BaseException) -> bool:
    """True when the same call may well succeed later: timeouts, lost connections, garbled
    replies and the HTTP statuses of an overloaded or restarting server. Never auth failures."""
    if isinstance(exc, UpstreamTimeout | ConnectionFailed | BadResponse):
        return True
    return isinstance(exc, HttpStatusError) and (exc.status or 0) in (429, 500, 502, 503, 504)
