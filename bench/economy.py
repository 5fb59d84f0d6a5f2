"""Measurement 5: API economy, counted by the emulators over the orders of measurement 4.

The counts cover the whole system while those orders flowed: the subscriber's login and
streaming, every worker's calls, retries included. Only Activated orders count as successful.
"""

from __future__ import annotations

from bench.harness import Measurement, Row, Run, Skipped, Target
from bench.rig import calls_between

SF_CALLS_TARGET = Target(2, "<=", "value")
TOKENS_TARGET = Target(5, "<=", "value")  # "a handful" per 1,000 orders, not one per job
WHMCS_CALLS_TARGET = Target(4, "<=", "value")


def measure(run: Run) -> Measurement:
    counts = run.shared.get("economy")
    if counts is None:
        raise Skipped("needs the orders of measurement 4 in the same run")
    result = Measurement(5, "economy", "API economy")
    orders = counts["orders"]
    if orders == 0:
        raise Skipped("no order of measurement 4 was Activated")
    calls = calls_between(counts["before"], counts["after"])
    logins = calls.pop("sf.token", 0)
    worker_logins = calls_between(counts["streaming"], counts["after"])["sf.token"]
    sf, whmcs = (
        {k.split(".", 1)[1]: n for k, n in calls.items() if k.startswith(s)}
        for s in ("sf.", "whmcs.")
    )
    result.rows = [
        Row(
            "Salesforce API calls per successful order",
            sum(sf.values()) / orders,
            "calls",
            target=SF_CALLS_TARGET,
        ),
        Row(
            "token requests per 1,000 orders, whole system",
            logins / orders * 1000,
            "logins",
            target=TOKENS_TARGET,
        ),
        Row(
            "token requests per 1,000 orders, workers alone",
            worker_logins / orders * 1000,
            "logins",
            target=TOKENS_TARGET,
        ),
        Row(
            "WHMCS calls per order",
            sum(whmcs.values()) / orders,
            "calls",
            target=WHMCS_CALLS_TARGET,
        ),
    ]
    result.params = {
        "orders": orders,
        "not_activated": counts["failed"],
        "logins": logins,
        "worker_logins": worker_logins,
    }
    result.notes = [
        f"{orders} Activated orders ({counts['failed']} not); {logins} token request(s) in all, "
        f"{worker_logins} of them by workers. Per 1,000 is scaled from these {orders} orders, "
        "which overstates it: the token is minted once and shared through Redis, so logins "
        "follow token lifetime and revocations, not orders.",
        "Salesforce REST calls by kind: " + _kinds(sf) + " (CometD traffic not included).",
        "WHMCS calls by action: " + _kinds(whmcs) + ".",
    ]
    return result


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
