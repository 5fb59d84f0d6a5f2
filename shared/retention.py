"""Retention of the fulfilment history: which attempts `provisioner db prune` deletes, and how.

The rule, for an attempt that finished (activated, failed or skipped) before the cutoff:
- its step log rows go;
- the attempt row goes too, unless it is its order's newest: that one stays as the order's
  record, the checkpoint a late retry resumes from instead of ordering in WHMCS twice.
An attempt still `running` is never touched. An outcome Salesforce has not taken yet waits in
Redis (prov:outbox, shared/outbox.py), not in these rows, so a prune cannot lose it.
The /metrics totals live in their own tables and do not go down.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, and_, exists, select

from shared.db import fulfilment_steps, fulfilments

# Long past Salesforce's 72 h event retention and any retry an operator still makes by hand, and
# long enough to answer "what happened to this order?" for a quarter's billing disputes.
DEFAULT_AGE = timedelta(days=90)
FINISHED = ("activated", "failed", "skipped")
BATCH = 2000  # attempts per transaction: short locks, while workers keep writing

_UNITS = {"d": "days", "h": "hours", "w": "weeks", "m": "minutes"}


@dataclass(frozen=True)
class Pruned:
    attempts: int = 0
    steps: int = 0


def parse_age(text: str) -> timedelta:
    """`90d`, `12w`, `36h`, `30m`; a bare number is days."""
    match = re.fullmatch(r"\s*(\d+)\s*([dhwm]?)\s*", text.lower())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not an age like 90d, 12w or 36h")
    return timedelta(**{_UNITS[match.group(2) or "d"]: int(match.group(1))})


def prunable(cutoff: datetime):
    """The finished attempts older than `cutoff`, as a WHERE clause on fulfilments."""
    return and_(
        fulfilments.c.status.in_(FINISHED),
        fulfilments.c.finished_at.is_not(None),
        fulfilments.c.finished_at < cutoff,
    )


def prune(engine: Engine, cutoff: datetime, batch: int = BATCH) -> Pruned:
    """Apply the rule above, `batch` attempts per transaction, oldest first."""
    newer = fulfilments.alias("newer")
    is_newest = ~exists().where(
        newer.c.sf_order_id == fulfilments.c.sf_order_id, newer.c.id > fulfilments.c.id
    )
    total, last_id = Pruned(), 0
    while True:
        query = (
            select(fulfilments.c.id, is_newest.label("newest"))
            .where(prunable(cutoff), fulfilments.c.id > last_id)
            .order_by(fulfilments.c.id)
            .limit(batch)
        )
        with engine.begin() as conn:
            rows = conn.execute(query).all()
            if not rows:
                return total
            ids = [row.id for row in rows]
            gone = [row.id for row in rows if not row.newest]
            steps = conn.execute(
                fulfilment_steps.delete().where(fulfilment_steps.c.fulfilment_id.in_(ids))
            ).rowcount
            attempts = (
                conn.execute(fulfilments.delete().where(fulfilments.c.id.in_(gone))).rowcount
                if gone
                else 0
            )
        total = Pruned(total.attempts + attempts, total.steps + steps)
        last_id = ids[-1]
