"""Measurement 5: API economy, counted by the emulators over the orders of measurement 4.

The counts cover the whole system while those orders flowed: the subscriber's login and
streaming, every worker's calls, retries included. Only Activated orders count as successful.
"""

from __future__ import annotations

from typing import Any

from bench.harness import Measurement, Row, Run, Skipped, Target

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
    sf, whmcs, logins = _diff(counts["before"], counts["after"])
    worker_logins = _diff(counts["streaming"], counts["after"])[2]
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


def _diff(
    before: dict[str, Any], after: dict[str, Any]
) -> tuple[dict[str, int], dict[str, int], int]:
    sf_before, sf_after = before["salesforce"], after["salesforce"]
    sf = {
        kind: n - sf_before["api_calls"].get(kind, 0) for kind, n in sf_after["api_calls"].items()
    }
    whmcs = {action: n - before["whmcs"].get(action, 0) for action, n in after["whmcs"].items()}
    return (
        {k: v for k, v in sf.items() if v},
        {k: v for k, v in whmcs.items() if v},
        sf_after["logins"] - sf_before["logins"],
    )


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
