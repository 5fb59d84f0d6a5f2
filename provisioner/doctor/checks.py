"""The runbook's checklist as doctor checks: each line says what was found and the runbook's fix.

Every check reads only: the JWT login mints a token the doctor keeps to itself, the CometD
subscription is dropped at once, and the WHMCS role is probed with calls that WHMCS refuses as
incomplete before they could change anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc

from healthcheck import probes
from provisioner.doctor.checklist import STORE_TIMEOUT, Check, Context, Verdict, failed, passed
from shared import keys, outbox
from shared import pubsub_api_pb2 as pb
from shared import pubsub_api_pb2_grpc as pb_grpc
from shared.errors import AuthError, IntegrationError, RemoteError
from shared.servertime import server_now
from shared.sfid import is_valid_id, to18
from subscriber import pubsub
from subscriber.cometd import BayeuxClient
from subscriber.heartbeat import dead_letters as read_dead_letters
from subscriber.replay import TIP
from worker import mapping
from worker.reconciler import read_state as read_reconciler

# The runbook's fixes, in its words (the runbook is the contract ops already know).
FIX_JWT = (
    "Runbook 'Salesforce status not updated': verify the connected app JWT config "
    "(SF_CLIENT_ID is its consumer key, its certificate matches SF_PRIVATE_KEY_PATH, the API user "
    "is pre-authorised and the app not revoked)"
)
FIX_NO_EVENTS = (
    "Runbook 'No events received': verify the Flow publishes OrderProvisionRequested__e on Order "
    "approval; confirm SF_EVENTS_ENABLED=true and valid SF JWT settings; check the subscriber logs "
    "for the subscription start on the expected channel"
)
FIX_REPLAY = (
    "Runbook 'Event replays not advancing': ensure Redis is healthy; the last replayId is stored "
    "under sf:pe:replay:<channel>; if needed set SF_EVENTS_REPLAY=ALL for a one-time backfill, "
    "then revert to LATEST"
)
FIX_FIELDS = (
    "Runbook 'Salesforce status not updated': the backend updates Activation_Status__c and "
    "WHMCS_Order_ID__c; give the API user Order update permission and edit access to the fields "
    "above (permission set, field-level security)"
)
FIX_MAPPING = (
    "Runbook 'WHMCS Add/Accept errors': fix the product mappings Product2.WH_Product_ID__c and "
    "Billing_Cycle__c (the WHMCS product must exist and price that cycle)"
)
FIX_REDIS = "Runbook: ensure Redis is healthy (REDIS_URL, server running, password, network)"
FIX_DATABASE = "check DATABASE_URL and that the server runs; then `provisioner db upgrade`"
FIX_KEY = (
    "SF_PRIVATE_KEY_PATH must name the connected app's unencrypted PEM private key, mode 0600 "
    "(prod: /app/secrets/sf-private.key)"
)
FIX_DEAD_LETTERS = (
    "each record in sf:pe:dead:<channel> holds the event's payload, the reason and its replay id; "
    "fix the cause, then press Provision / Retry on the order (or let the reconciler give it a "
    "job), and DEL the list once handled"
)
FIX_RECONCILER = (
    "start `python -m worker` (every worker runs the reconciler; one leads); check its logs for "
    "'Reconciler sweep failed'"
)
FIX_OVERDUE = (
    "the reconciler gives each one a job every RECONCILE_INTERVAL: look for 'Reconciled order "
    "with no event' in the worker logs, then `provisioner doctor --order <OrderId>`"
)
FIX_OUTBOX = (
    "Runbook 'Salesforce status not updated': the workers' reapers retry with back-off until "
    "Salesforce takes each outcome; fix what refuses it (SF_AUTH: the connected app JWT config; "
    "403: the API user's Order permissions; 400: a validation rule on Order); keep a worker running"
)
FIX_WHMCS_REACH = "check WHMCS_API_URL (ends in /includes/api.php), the network path and TLS trust"

# Order fields the worker writes (worker/steps.py sf_*_update) and the values it writes.
WRITTEN_FIELDS = (
    "Activation_Status__c",
    "Activation_Error_Code__c",
    "Activation_Error_Message__c",
    "WHMCS_Order_ID__c",
)
ACTIVATION_VALUES = ("Activating", "Activated", "Failed")
RETENTION_SECONDS = 72 * 3600  # Salesforce keeps platform events 72 h
REPLAY_LAG_SECONDS = 30.0  # a received event's replay id is stored right after its enqueue


def _store(ctx: Context, body: Callable[[], Mapping[str, Any]]) -> probes.Probe:
    """/health's probe of a store, abandoned after STORE_TIMEOUT."""
    probe = {"store": lambda: probes.timed(body, ctx.s.secrets())}
    return probes.Flights().run(probe, STORE_TIMEOUT)["store"]


def _is_key_problem(text: str) -> bool:
    return text.startswith("SF_PRIVATE_KEY_PATH")


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


# --- configuration --------------------------------------------------------------------------------


def configuration(ctx: Context) -> Verdict:
    problems = _unique(
        p for group in ctx.problems.values() for p in group if not _is_key_problem(p)
    )
    if problems:
        return failed(
            "\n".join(problems),
            "set each variable named above (README, Configuration); each line shows a good value",
        )
    s = ctx.s
    return passed(
        f"APP_ENV={s.app_env}; channel {s.events.channel}; queue {s.queue_name}; "
        f"price book {s.pricebook_id}"
    )


def key_file(ctx: Context) -> Verdict:
    problems = [p for group in ctx.problems.values() for p in group if _is_key_problem(p)]
    if ctx.settings is not None:
        problems += [w for w in ctx.settings.warnings if _is_key_problem(w)]
    if problems:
        return failed("\n".join(_unique(problems)), FIX_KEY)
    path = ctx.settings.salesforce.private_key_path if ctx.settings else "SF_PRIVATE_KEY_PATH"
    return passed(f"{path}: PEM private key, not readable by others")


# --- stores ---------------------------------------------------------------------------------------


def redis_store(ctx: Context) -> Verdict:
    probe = _store(ctx, lambda: probes.ping_redis(ctx.redis))
    if not probe.ok:
        return failed(f"Redis {probe.status}: {probe.error}", FIX_REDIS)
    return passed(f"PING answered in {probe.latency_ms:.0f} ms")


def database_store(ctx: Context) -> Verdict:
    probe = _store(ctx, lambda: probes.ping_database(ctx.engine))
    if not probe.ok:
        return failed(f"database {probe.status}: {probe.error}", FIX_DATABASE)
    version = probe.details["schema_version"]
    if not probe.details["schema_current"]:
        return failed(
            f"{ctx.engine.dialect.name} answers, but its schema is at revision {version or 'none'}",
            "run `provisioner db upgrade`",
        )
    return passed(f"{ctx.engine.dialect.name} answers; schema at revision {version} (current)")


# --- Salesforce -----------------------------------------------------------------------------------


def salesforce_login(ctx: Context) -> Verdict:
    sf = ctx.s.salesforce
    try:
        token = ctx.tokens.current()
    except AuthError as exc:
        return failed(str(exc), FIX_JWT)
    except IntegrationError as exc:
        return failed(
            str(exc), "check SF_LOGIN_URL, the network path and TLS trust (REQUESTS_CA_BUNDLE)"
        )
    return passed(
        f"JWT bearer login as {sf.username} at {sf.login_url}; instance {token.instance_url}"
    )


def events_enabled(ctx: Context) -> Verdict:
    if not ctx.s.events.enabled:
        return failed(
            "SF_EVENTS_ENABLED=false: the subscriber idles without connecting", FIX_NO_EVENTS
        )
    return passed(
        f"SF_EVENTS_ENABLED=true, SF_EVENTS_REPLAY={ctx.s.events.replay}, "
        f"SF_EVENTS_TRANSPORT={ctx.s.events.transport}"
    )


FIX_CHANNEL_ACCESS = (
    FIX_NO_EVENTS + "; grant the API user read access to the platform event "
    "(permission set) and check the channel name (case-sensitive)"
)


def event_channel(ctx: Context) -> Verdict:
    """The transport the subscriber uses (SF_EVENTS_TRANSPORT), probed with its own client."""
    if ctx.s.events.transport == "pubsub":
        return pubsub_topic(ctx)
    channel = ctx.s.events.channel
    try:
        # The subscriber's own CometD client, on the doctor's token and a session of its own.
        client = BayeuxClient.for_org(ctx.tokens.current(), ctx.s.salesforce, ctx.session())
        error = subscribe_once(client, channel)
    except IntegrationError as exc:
        return failed(f"CometD endpoint failed: {type(exc).__name__}: {exc}", FIX_NO_EVENTS)
    if error:
        return failed(error, FIX_CHANNEL_ACCESS)
    return passed(f"CometD handshake and subscribe to {channel} accepted (then disconnected)")


def pubsub_topic(ctx: Context) -> Verdict:
    """GetTopic with the subscriber's channel and call metadata: endpoint, TLS, token, org id
    and the topic, without opening a stream."""
    channel, endpoint = ctx.s.events.channel, ctx.s.events.pubsub_endpoint
    request = pb.TopicRequest(topic_name=channel)
    try:
        with pubsub.open_channel(endpoint) as grpc_channel:
            topic = pb_grpc.PubSubStub(grpc_channel).GetTopic(
                request,
                metadata=pubsub.metadata(ctx.tokens.current()),
                timeout=ctx.s.salesforce.timeout,
            )
    except grpc.RpcError as exc:
        code = pubsub.trailers(exc).get("error-code", "")
        why = " ".join(p for p in (pubsub.status_name(exc), code, exc.details() or "") if p)
        return failed(
            f"Pub/Sub GetTopic {channel} at {endpoint} refused: {why}", FIX_CHANNEL_ACCESS
        )
    if not topic.can_subscribe:
        return failed(
            f"Pub/Sub topic {channel}: the API user may not subscribe", FIX_CHANNEL_ACCESS
        )
    return passed(
        f"Pub/Sub GetTopic {channel} at {endpoint}: can_subscribe (schema {topic.schema_id})"
    )


def subscribe_once(client: BayeuxClient, channel: str) -> str:
    """Handshake, subscribe (new events only), disconnect; "" when accepted, else why not."""
    try:
        shake = client.handshake()
        if not shake.successful:
            return f"CometD handshake refused: {shake.error} {shake.failure_reason}".strip()
        try:
            sub = client.subscribe(channel, TIP)
        finally:
            client.disconnect(client.request_timeout)
    finally:
        client.close()
    if not sub.successful:
        return f"subscribe to {channel} refused: {sub.error}"
    return ""


def order_fields(ctx: Context) -> Verdict:
    described = ctx.salesforce.describe("Order")
    fields = {str(f.get("name")): f for f in described.get("fields", []) if isinstance(f, Mapping)}
    problems = field_problems(fields)
    if problems:
        return failed("\n".join(problems), FIX_FIELDS)
    return passed(f"the API user may update {', '.join(WRITTEN_FIELDS)}")


def field_problems(fields: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What stops the worker writing its outcome, from Order's describe."""
    problems = []
    for name in WRITTEN_FIELDS:
        described = fields.get(name)
        if described is None:
            problems.append(f"Order.{name} does not exist (or is hidden from the API user)")
        elif not described.get("updateable"):
            problems.append(f"Order.{name} is read-only for the API user")
    values = fields.get("Activation_Status__c", {}).get("picklistValues") or []
    active = {v.get("value") for v in values if isinstance(v, Mapping) and v.get("active", True)}
    missing = [v for v in ACTIVATION_VALUES if values and v not in active]
    if missing:
        problems.append(f"Activation_Status__c lacks the picklist values {', '.join(missing)}")
    return problems


# --- the subscriber -------------------------------------------------------------------------------


def subscriber_heartbeat(ctx: Context) -> Verdict:
    heartbeat = probes.read_heartbeat(ctx.redis, ctx.s.events.channel)
    return heartbeat_verdict(heartbeat, server_now(ctx.redis), ctx.s.events.channel)


def heartbeat_verdict(heartbeat: Mapping[str, str], now: float, channel: str) -> Verdict:
    if not heartbeat:
        return failed(
            f"no heartbeat under sf:pe:heartbeat:{channel}: no subscriber has run on this Redis",
            FIX_NO_EVENTS + "; start the subscriber (python -m subscriber)",
        )
    status = probes.subscriber_status(heartbeat, now)
    seen = (
        f"state {status['state']}, holder {status['holder']}, "
        f"last successful connect {_ago(status['last_connect_age_seconds'])}, "
        f"heartbeat {_ago(status['heartbeat_age_seconds'])}, "
        f"last event {_ago(status['last_event_age_seconds'])}"
    )
    if status["state"] == "disabled":
        return failed(f"the subscriber runs with SF_EVENTS_ENABLED=false ({seen})", FIX_NO_EVENTS)
    if not status["active"]:
        limit = probes.stale_after(heartbeat)
        return failed(
            f"subscriber stalled: no successful /meta/connect within {limit:.0f} s ({seen})",
            FIX_NO_EVENTS + "; restart the subscriber (it resumes from the stored replay id)",
        )
    return passed(f"{seen}; {status['events_enqueued']} events enqueued")


def replay_progress(ctx: Context) -> Verdict:
    channel, transport = ctx.s.events.channel, ctx.s.events.transport
    # The position of the transport in use (SF_EVENTS_TRANSPORT): Pub/Sub keeps its own key.
    stored = probes.read_position(ctx.redis, channel, transport)["replay_id"]
    heartbeat = probes.read_heartbeat(ctx.redis, channel)
    key = keys.pubsub_replay_key(channel) if transport == "pubsub" else None
    return replay_verdict(stored, heartbeat, server_now(ctx.redis), channel, key)


def replay_verdict(
    stored: int | None,
    heartbeat: Mapping[str, str],
    now: float,
    channel: str,
    key: str | None = None,
) -> Verdict:
    """Is the stored replay position (sf:pe:replay:<channel> for CometD) keeping up with what the
    subscriber receives?"""
    received = probes.as_int(heartbeat.get("last_replay_id"))
    last_event = probes.as_float(heartbeat.get("last_event_at"))
    fallback_at = probes.as_float(heartbeat.get("last_fallback_at"))
    key = key or f"sf:pe:replay:{channel}"
    if fallback_at is not None and now - fallback_at < RETENTION_SECONDS:
        return failed(
            f"{_ago(now - fallback_at)} the stored replay id was outside Salesforce's 72 h "
            f"retention ({heartbeat.get('replay_fallbacks', '?')} fallbacks so far): events "
            f"published while the subscriber was away may be lost; {key} = {stored}",
            FIX_REPLAY + "; `provisioner replay` lists the gaps",
        )
    if stored is not None and stored < 0:
        return passed(f"{key} = {stored}: set by an operator (-1 tip, -2 every retained event)")
    behind = received is not None and (stored is None or stored < received)
    if behind and last_event is not None and now - last_event > REPLAY_LAG_SECONDS:
        return failed(
            f"{key} holds {stored}, but the subscriber received replay id {received} "
            f"{_ago(now - last_event)}: the replay id is not advancing",
            FIX_REPLAY,
        )
    if stored is None:
        return passed(f"{key} is not set yet: the subscriber starts with new events")
    last = "" if last_event is None else f"; last event {_ago(now - last_event)}"
    return passed(f"{key} = {stored}{last}")


def dead_letters(ctx: Context) -> Verdict:
    channel = ctx.s.events.channel
    records = read_dead_letters(ctx.redis, channel, limit=1)
    total = probes.as_int(probes.read_heartbeat(ctx.redis, channel).get("dead_letters")) or 0
    return dead_letters_verdict(records[0] if records else None, total, ctx.now, channel)


def dead_letters_verdict(
    newest: Mapping[str, Any] | None, total: int, now: float, channel: str
) -> Verdict:
    """Events that could not become jobs: a failure while the newest is within retention."""
    if newest is None:
        return passed(f"no dead-lettered events under sf:pe:dead:{channel} ({total} ever)")
    at = probes.as_float(newest.get("at"))
    seen = (
        f"{total} events could not become jobs; newest {_ago(None if at is None else now - at)}: "
        f"replay id {newest.get('replay_id')}, order {newest.get('order_id')}, "
        f"reason {newest.get('reason')}"
    )
    if at is not None and now - at > RETENTION_SECONDS:
        return passed(f"{seen} (older than the 72 h retention)")
    return failed(seen, FIX_DEAD_LETTERS)


def reconciler(ctx: Context) -> Verdict:
    settings = ctx.s
    state = read_reconciler(ctx.redis)
    return reconciler_verdict(state, ctx.now, settings.reconcile_interval, settings.reconcile_after)


def reconciler_verdict(
    state: Mapping[str, str], now: float, interval: float, after: float
) -> Verdict:
    """Is one reconciler sweeping, and are orders Activating for longer than they should be?"""
    last = probes.as_float(state.get("last_sweep_at"))
    if last is None or now - last > 3 * interval + 60:
        when = "recorded" if last is None else f"since {_ago(now - last)}"
        return failed(
            f"no reconciler sweep {when} (one every {interval:g} s expected): orders whose "
            "event never came stay Activating",
            FIX_RECONCILER,
        )
    overdue = probes.as_int(state.get("overdue")) or 0
    swept = (
        f"last sweep {_ago(now - last)} by {state.get('holder', '?')}, "
        f"{state.get('reconciled_total', '0')} orders reconciled so far"
    )
    if overdue:
        since = probes.as_float(state.get("oldest_activating_since"))
        more = " or more" if state.get("truncated") == "1" else ""
        return failed(
            f"{overdue}{more} orders Activating for longer than RECONCILE_AFTER={after:g} s; "
            f"the oldest last modified {_ago(None if since is None else now - since)} ({swept})",
            FIX_OVERDUE,
        )
    return passed(f"no order Activating for longer than {after:g} s ({swept})")


# --- outcomes Salesforce has not taken -----------------------------------------------------------


def waiting_outcomes(ctx: Context) -> Verdict:
    entries = outbox.entries(ctx.redis)
    return outbox_verdict({k: outbox.Waiting.loads(v) for k, v in entries.items()}, ctx.now)


def outbox_verdict(waiting: Mapping[str, outbox.Waiting | None], now: float) -> Verdict:
    """prov:outbox: outcomes the workers' reapers are still trying to write to Salesforce."""
    if not waiting:
        return passed("no outcome waits for delivery to Salesforce (prov:outbox is empty)")
    readable = {k: w for k, w in waiting.items() if w is not None}
    oldest_id = min(readable, key=lambda k: readable[k].first_at, default="")
    detail = f"{len(waiting)} outcome(s) wait for delivery to Salesforce (prov:outbox)"
    if oldest_id:
        oldest = readable[oldest_id]
        detail += (
            f"; the oldest, {oldest.status} for Order {oldest_id}, first refused "
            f"{_ago(now - oldest.first_at)}, {oldest.attempts} attempt(s), last refused with "
            f"{oldest.last_error or '?'}"
        )
    return failed(detail, FIX_OUTBOX)


# --- WHMCS ----------------------------------------------------------------------------------------


def whmcs_credentials(ctx: Context) -> Verdict:
    try:
        ctx.whmcs.get_products()
    except AuthError as exc:
        if permission_denied(exc):
            return passed(f"{ctx.s.whmcs.api_url} accepted the credentials ({exc})")
        return failed(str(exc), whmcs_auth_fix(str(exc)))
    except IntegrationError as exc:
        return failed(f"WHMCS unreachable or not answering JSON: {exc}", FIX_WHMCS_REACH)
    return passed(f"{ctx.s.whmcs.api_url} answered GetProducts with these credentials")


def whmcs_auth_fix(message: str) -> str:
    text = message.lower()
    if "invalid ip" in text:
        return (
            "allow this host's egress IP under WHMCS General Settings > Security > API IP Access "
            "Restriction, or set WHMCS_API_ACCESS_KEY to the configuration.php $api_access_key"
        )
    if "banned" in text:
        return (
            "too many failed logins banned this IP (15 min by default): fix the secret, then lift "
            "the ban in WHMCS (Utilities > Security > Banned IPs)"
        )
    if "access key" in text:
        return "WHMCS_API_ACCESS_KEY does not match $api_access_key in WHMCS configuration.php"
    return (
        "WHMCS_API_IDENTIFIER and WHMCS_API_SECRET must be an API credential of an active admin "
        "(Setup > Staff Management > Manage API Credentials); do not retry blindly: each failure "
        "counts toward an IP ban"
    )


def permission_denied(exc: BaseException) -> bool:
    """WHMCS's 403 for an action outside the credential's API role (credentials themselves ok)."""
    return isinstance(exc, AuthError) and "invalid permissions" in str(exc).lower()


# Every action WhmcsClient sends, with parameters WHMCS refuses as incomplete (a validation error
# after the role check) before it could read much or change anything.
ROLE_PROBES: dict[str, dict[str, Any]] = {
    "GetProducts": {"pid": 0},
    "GetPaymentMethods": {},
    "GetPayMethods": {},
    "GetClientsDetails": {},
    "GetOrders": {"id": 0, "limitnum": 1},
    "AddOrder": {},
    "AcceptOrder": {},
    "CancelOrder": {},
}
WRITE_ACTIONS = frozenset({"AddOrder", "AcceptOrder", "CancelOrder"})
FIX_ROLE = (
    "allow these actions in the API role of WHMCS_API_IDENTIFIER's credential (WHMCS: Setup > "
    "Staff Management > Manage API Credentials > API Roles)"
)


def whmcs_role(ctx: Context) -> Verdict:
    """Each action `allowed` (answered, even with a validation error), `denied`, or what went
    wrong."""
    answers = dict.fromkeys(ROLE_PROBES, "allowed")
    for action, params in ROLE_PROBES.items():
        try:
            ctx.whmcs.call(action, params, write=action in WRITE_ACTIONS)
        except RemoteError:
            pass
        except IntegrationError as exc:
            answers[action] = "denied" if permission_denied(exc) else f"error: {exc}"
    return role_verdict(answers)


def role_verdict(answers: Mapping[str, str]) -> Verdict:
    denied = [action for action, answer in answers.items() if answer == "denied"]
    broken = [
        f"{action}: {answer}" for action, answer in answers.items() if answer.startswith("error")
    ]
    if denied:
        return failed(f"the API role does not allow {', '.join(denied)}", FIX_ROLE)
    if broken:
        return failed("\n".join(broken), FIX_WHMCS_REACH)
    return passed(f"the API role allows {', '.join(answers)}")


def product_mapping(ctx: Context) -> Verdict:
    pricebook = ctx.s.pricebook_id
    if not is_valid_id(pricebook):
        return failed(f"PORTAL_PRICEBOOK_ID={pricebook!r} is not a Salesforce id", FIX_MAPPING)
    rows = ctx.salesforce.query(
        "SELECT Id, Product2Id, Product2.Name, Product2.ProductCode, Product2.IsActive, "
        "Product2.WH_Product_ID__c, Product2.Billing_Cycle__c FROM PricebookEntry "
        f"WHERE Pricebook2Id = '{to18(pricebook)}' AND IsActive = true"
    )
    products = [r.get("Product2") or {} for r in rows]
    active = [p for p in products if p.get("IsActive")]
    if not active:
        return failed(
            f"price book {pricebook} has no active products",
            "check PORTAL_PRICEBOOK_ID and the price book's active entries",
        )
    catalogue = {int(p["pid"]): p for p in ctx.whmcs.get_products() if "pid" in p}
    gaps = coverage_gaps(active, catalogue)
    if gaps:
        return failed(
            f"{len(gaps)} of {len(active)} active products:\n" + "\n".join(gaps), FIX_MAPPING
        )
    return passed(
        f"all {len(active)} active products of price book {pricebook} map to WHMCS products "
        "with a priced billing cycle"
    )


def coverage_gaps(
    products: Iterable[Mapping[str, Any]], catalogue: Mapping[int, Mapping[str, Any]]
) -> list[str]:
    """One line per product the worker could not order, by the worker's own mapping rules."""
    gaps = []
    for product in products:
        item = mapping.OrderItem(
            item_id=str(product.get("Id") or ""),
            number="",
            product_name=str(product.get("Name") or ""),
            product_code=str(product.get("ProductCode") or ""),
            whmcs_pid=product.get("WH_Product_ID__c"),
            billing_cycle=product.get("Billing_Cycle__c"),
            quantity=1,
        )
        mapped = mapping.map_item(item, catalogue)
        if not mapped.ok:
            label = item.product_name + (f" ({item.product_code})" if item.product_code else "")
            gaps.append(f"{label}: {mapped.gap_code}: {mapped.gap}")
    return gaps


SF_LOGIN = "salesforce login (JWT)"
CHECKS: tuple[Check, ...] = (
    Check("configuration", configuration, offline=True),
    Check("private key file", key_file, offline=True),
    Check("redis", redis_store),
    Check("database", database_store),
    Check(SF_LOGIN, salesforce_login, groups=("salesforce",)),
    Check("events enabled", events_enabled, groups=("events",)),
    Check(
        "event channel subscribable",
        event_channel,
        groups=("salesforce", "events"),
        after=(SF_LOGIN,),
    ),
    Check("order fields updateable", order_fields, groups=("salesforce",), after=(SF_LOGIN,)),
    Check("subscriber heartbeat", subscriber_heartbeat, groups=("events",), after=("redis",)),
    Check("replay progress", replay_progress, groups=("events",), after=("redis",)),
    Check("dead-lettered events", dead_letters, groups=("events",), after=("redis",)),
    Check("reconciler", reconciler, after=("redis",)),
    Check("outcomes waiting for delivery", waiting_outcomes, after=("redis",)),
    Check("whmcs credentials", whmcs_credentials, groups=("whmcs",)),
    # After a credential failure nothing else is sent: each refused login counts toward a ban.
    Check("whmcs api role", whmcs_role, groups=("whmcs",), after=("whmcs credentials",)),
    Check(
        "product mapping",
        product_mapping,
        groups=("salesforce", "orders", "whmcs"),
        after=(SF_LOGIN, "whmcs credentials"),
    ),
)
