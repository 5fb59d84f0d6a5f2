"""`provisioner doctor --order <OrderId>`: one order's status, timeline, pay methods and mapping."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from provisioner.commands.order_status import render as render_timeline
from provisioner.doctor.checklist import Check, Context, Verdict, failed, passed
from provisioner.doctor.checks import FIX_JWT, FIX_MAPPING, FIX_NO_EVENTS, SF_LOGIN
from shared.errors import OrderError, OrderNotFound, RemoteError
from shared.sfid import is_valid_id, to18
from worker import mapping, steps
from worker.records import Records

FIX_PAYMENT = (
    "Runbook '409 Payment method missing': the customer has no WHMCS payment method; ask the "
    "customer to add one, then Provision / Retry on the Order"
)
FIX_RETRY = "transient: fix nothing, click Provision / Retry on the Order"
FIX_DEFAULT = "read the timeline below, fix the cause, then Provision / Retry on the Order"
# Activation_Error_Code__c -> the runbook's fix (codes from shared/errors.py and worker/steps.py).
FIXES = {
    "409": FIX_PAYMENT,
    **dict.fromkeys(
        (
            "UNMAPPED_PRODUCT",
            "UNKNOWN_WHMCS_PRODUCT",
            "INVALID_BILLING_CYCLE",
            "INVALID_QUANTITY",
            "SERVICE_COUNT_MISMATCH",
        ),
        FIX_MAPPING,
    ),
    "UNMAPPED_ACCOUNT": "map the Account to its WHMCS client (`provisioner mappings`), then retry",
    **dict.fromkeys(("SF_AUTH", "401", "403"), FIX_JWT),
    **dict.fromkeys(("429", "500", "502", "503", "ECONNECTION"), FIX_RETRY),
    "ETIMEOUT": FIX_RETRY + " (the worker checks WHMCS for an order it may have made first)",
    "WORKER_LOST": FIX_RETRY + " (the worker died mid-job; nothing is ordered twice)",
    "WHMCS_OUTCOME_UNKNOWN": FIX_RETRY
    + " after the time the message gives (an earlier AddOrder may still be running in WHMCS)",
    "WHMCS_ORDER_MISMATCH": (
        "check in WHMCS the order WHMCS_Order_ID__c names; clear WHMCS_Order_ID__c to order "
        "afresh, then Provision / Retry on the Order"
    ),
}
ORDER = "order"


def checks(order_id: str) -> list[Check]:
    """The per-order lines, bound to `order_id`."""
    return [
        Check(
            "order status",
            lambda ctx: order_status(ctx, order_id),
            groups=("salesforce", "orders"),
            after=(SF_LOGIN,),
        ),
        Check("fulfilment timeline", lambda ctx: timeline(ctx, order_id), after=("database",)),
        # These need the order as read, whatever its status (a Failed order is what they explain).
        Check(
            "payment methods",
            needs_order(payment_methods),
            groups=("whmcs",),
            after=("database", "whmcs credentials"),
        ),
        Check("order mapping", needs_order(order_mapping), after=("whmcs credentials",)),
    ]


def needs_order(check: Callable[[Context, steps.Order], Verdict]) -> Callable[[Context], Verdict]:
    def run(ctx: Context) -> Verdict:
        order = ctx.extras.get(ORDER)
        if order is None:
            return failed("not checked: order status", "fix 'order status' first")
        return check(ctx, order)

    return run


def order_status(ctx: Context, order_id: str) -> Verdict:
    if not is_valid_id(order_id, "Order"):
        return failed(
            f"{order_id!r} is not a Salesforce Order id", "give the 15/18-char id (801...)"
        )
    try:
        order = steps.read_order(ctx.salesforce, to18(order_id), ctx.s.account_client_field)
    except OrderNotFound as exc:
        return failed(str(exc), "check the id (and that the API user can see the Order)")
    ctx.extras[ORDER] = order
    return status_verdict(order)


def status_verdict(order: steps.Order) -> Verdict:
    shown = (
        f"Order {order.number} ({order.id}): Status={order.status}, "
        f"Activation_Status__c={order.activation_status or '-'}, "
        f"WHMCS_Order_ID__c={order.whmcs_order_id or '-'}, "
        f"Activation_Error_Code__c={order.error_code or '-'}, "
        f"Activation_Error_Message__c={order.error_message or '-'}"
    )
    if order.activation_status == steps.FAILED:
        return failed(shown, FIXES.get(order.error_code or "", FIX_DEFAULT))
    return passed(shown)


def timeline(ctx: Context, order_id: str) -> Verdict:
    order_id = to18(order_id) if is_valid_id(order_id, "Order") else order_id
    history = Records(ctx.engine).history(order_id)
    order = ctx.extras.get(ORDER)
    if not history:
        waiting = order is not None and order.activation_status in (steps.ACTIVATING, steps.FAILED)
        if waiting:
            return failed("no fulfilment attempt recorded: no worker ever took it", FIX_NO_EVENTS)
        return passed("no fulfilment attempt recorded (the order was never approved)")
    jobs = {a.job_id: job_line(ctx, a.job_id) for a, _ in history if a.job_id}
    text = render_timeline(order_id, history, jobs)
    last = history[-1][0]
    if last.status == "failed":
        return failed(text, FIXES.get(last.error_code, FIX_DEFAULT))
    return passed(text)


def job_line(ctx: Context, job_id: str) -> str:
    """The RQ job as rq-dashboard shows it: status and the last line of its traceback."""
    try:
        job = Job.fetch(job_id, connection=ctx.redis, serializer=JSONSerializer)
    except NoSuchJobError:
        return f"job {job_id}: no longer in Redis"
    status = job.get_status(refresh=False)
    status = getattr(status, "value", status)  # JobStatus is a str Enum; show its value
    result = job.latest_result()
    last_line = ""
    if result is not None and result.exc_string:
        last_line = ": " + result.exc_string.strip().splitlines()[-1][:200]
    return f"job {job_id} {status}{last_line} (rq-dashboard: /rq/0/view/job/{job_id})"


def payment_methods(ctx: Context, order: steps.Order) -> Verdict:
    client_id = mapping.client_id_for(
        Records(ctx.engine).client_for_account(order.account_id), order.account_client_value
    )
    if client_id is None:
        return failed(
            f"Account {order.account_name or order.account_id} has no WHMCS client "
            f"(no database mapping, no {ctx.s.account_client_field})",
            FIXES["UNMAPPED_ACCOUNT"],
        )
    try:
        methods = ctx.whmcs.get_pay_methods(client_id)
    except RemoteError as exc:
        return failed(f"WHMCS client {client_id}: {exc}", FIXES["UNMAPPED_ACCOUNT"])
    if not methods:
        return failed(f"WHMCS client {client_id} has no payment method", FIX_PAYMENT)
    return passed(
        f"WHMCS client {client_id}: " + "; ".join(describe_pay_method(m) for m in methods)
    )


def describe_pay_method(method: Mapping[str, Any]) -> str:
    gateway = method.get("gateway_name") or "local"
    return f"{method.get('description') or method.get('type')} ({method.get('type')}, {gateway})"


def order_mapping(ctx: Context, order: steps.Order) -> Verdict:
    catalogue = {int(p["pid"]): p for p in ctx.whmcs.get_products() if "pid" in p}
    mapped = mapping.map_items(order.items, catalogue)
    rows = [m.report() for m in mapped]
    text = "\n".join(
        f"{r['item']} {r['product']}: pid {r['whmcs_pid']}, {r['billing_cycle']}, "
        f"qty {r['quantity']}: {r['status']}"
        for r in rows
    )
    problems = []
    try:
        steps.order_details(order, ctx.s.pricebook_id)
    except OrderError as exc:
        problems.append(f"{exc.code}: {exc}")
    if any(not m.ok for m in mapped) or problems:
        return failed("\n".join([*problems, text]), FIX_MAPPING)
    return passed(text)
