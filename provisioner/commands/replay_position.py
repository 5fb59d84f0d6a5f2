"""`provisioner replay show | set <id> | reset`: inspect or move the stored replay position.

The subscriber reads `sf:pe:replay:<channel>` whenever it subscribes (at start and after every
reconnect), so a change takes effect at its next subscription; restart it to apply one now.
`set -2` then a restart backfills every retained event (72 h) without touching SF_EVENTS_REPLAY;
the EventUuid dedupe and the worker's guard make that safe.

With SF_EVENTS_TRANSPORT=pubsub (or `--transport pubsub`) the same commands act on the Pub/Sub
position `sf:pe:pubsub:replay:<channel>` instead: an opaque id shown and set as hex (`reset`
then starts from the tip; SF_EVENTS_REPLAY=ALL backfills). The two keys never mix.
"""

from __future__ import annotations

import argparse
import datetime

from shared.connections import redis_client
from shared.servertime import server_now
from shared.startup import start
from subscriber import heartbeat, pubsub_replay
from subscriber.pubsub_replay import PubSubReplayStore
from subscriber.replay import EARLIEST, TIP, ReplayStore

GAPS_SHOWN = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("show", help="the stored replay id, the subscriber's heartbeat and gaps")
    setter = actions.add_parser(
        "set",
        help="store a replay id: N (resume after N), -1 (tip) or -2 (every retained event); "
        "for pubsub, the id in hex as `show` prints it",
    )
    setter.add_argument("replay_id")
    actions.add_parser("reset", help="forget the stored id (LATEST then starts from the tip)")
    parser.add_argument(
        "--channel", help="platform event channel (default: SF_PROVISION_EVENT_CHANNEL)"
    )
    parser.add_argument(
        "--transport",
        choices=("cometd", "pubsub"),
        help="whose position (default: SF_EVENTS_TRANSPORT)",
    )


def run(args: argparse.Namespace) -> int:
    settings = start("provisioner", needs=(), log=False)
    channel, mode = args.channel or settings.events.channel, settings.events.replay
    pubsub = (args.transport or settings.events.transport) == "pubsub"
    connection = redis_client(settings.redis)
    if pubsub:
        store, (parse, shown, show_all, refused) = PubSubReplayStore(connection, channel), PUBSUB
    else:
        store, (parse, shown, show_all, refused) = ReplayStore(connection, channel), COMETD
    try:
        if args.action == "show":
            print(show_all(store, mode, server_now(connection)))
            return 0
        before, after = store.get(), None
        if args.action == "set":
            after = parse(args.replay_id)
            if after is None:
                print(refused)
                return 2
            store.set(after)
        else:
            store.reset()
        print(f"{store.key}: {shown(before)} -> {shown(after)}")
        print(APPLY)
        return 0
    finally:
        connection.close()


APPLY = "Takes effect at the subscriber's next subscription: restart it to apply now."


def show_pubsub(store: PubSubReplayStore, mode: str, now: float) -> str:
    stored = store.get()
    cometd = ReplayStore(store.redis, store.channel)
    cometd_lines = show(cometd, mode, now).splitlines()
    start = pubsub_replay.start_position(mode, stored, first_subscription=True)
    then = pubsub_replay.start_position(mode, stored, first_subscription=False)
    lines = [
        cometd_lines[0],
        "transport:        pubsub (Pub/Sub API)",
        f"stored replay id: {_hex(stored)}  ({store.key})",
        f"next start:       {start.describe()} at process start, then {then.describe()}",
        *cometd_lines[4:],  # the subscriber, its counters and the gaps
    ]
    return "\n".join(lines)


def _hex(value: bytes | None) -> str:
    if value is None:
        return "none"
    number = pubsub_replay.as_int(value)
    return value.hex() + (f" ({number})" if number is not None else "")


def _cometd_id(text: str) -> int | None:
    """A replay id Salesforce gave out, -1 or -2; None for anything else."""
    try:
        replay_id = int(text)
    except ValueError:
        return None
    return replay_id if replay_id >= EARLIEST else None


def show(store: ReplayStore, mode: str, now: float) -> str:
    stored = store.get()
    beat = heartbeat.read(store.redis, store.channel)
    gaps = heartbeat.gaps(store.redis, store.channel)
    lines = [
        f"channel:          {store.channel}",
        "transport:        cometd (Streaming API)",
        f"stored replay id: {_position(stored)}  ({store.key})",
        f"next start:       {_next_start(mode, stored)}",
        f"subscriber:       {_summary(beat, now)}",
    ]
    if beat:
        lines.append(
            f"events:           {beat.get('events_enqueued', '0')} enqueued, "
            f"{beat.get('duplicates', '0')} duplicates ignored, last replay id "
            f"{beat.get('last_replay_id', '-')} {_ago(beat.get('last_event_at'), now)}"
        )
    lines.append(
        f"replay fallbacks: {beat.get('replay_fallbacks', '0')} (possible gaps; newest first)"
    )
    for gap in gaps[:GAPS_SHOWN]:
        lines.append(
            f"  {_when(gap.get('at'))}  requested {gap.get('requested')} -> "
            f"fell back to {gap.get('fallback')}: {gap.get('error', '')[:120]}"
        )
    return "\n".join(lines)


def _position(value: int | None) -> str:
    if value is None:
        return "none"
    if value == TIP:
        return "-1 (tip: new events only)"
    if value == EARLIEST:
        return "-2 (every retained event)"
    return str(value)


def _next_start(mode: str, stored: int | None) -> str:
    if mode == "ALL":
        return "-2 at process start (SF_EVENTS_REPLAY=ALL), then the stored id"
    if stored is None:
        return "-1 (SF_EVENTS_REPLAY=LATEST and nothing stored)"
    return f"{_position(stored)} (SF_EVENTS_REPLAY=LATEST)"


def _summary(beat: dict[str, str], now: float) -> str:
    if not beat:
        return "no heartbeat (never ran against this Redis)"
    return (
        f"{beat.get('state', '?')} on {beat.get('holder', '?')}, "
        f"updated {_ago(beat.get('updated_at'), now)}, "
        f"last connect {_ago(beat.get('last_connect_at'), now)}"
    )


def _ago(stamp: str | None, now: float) -> str:
    if not stamp:
        return "never"
    try:
        return f"{max(0.0, now - float(stamp)):.0f}s ago"
    except ValueError:
        return "?"


def _when(stamp: object) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(float(str(stamp)), datetime.UTC)
    except ValueError:
        return "?"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# Each transport's position: how `set` reads an id, how one is shown, `show`, a refused id.
COMETD = (
    _cometd_id,
    _position,
    show,
    "replay id must be -2, -1 or a replay id Salesforce gave out",
)
PUBSUB = (
    pubsub_replay.parse,
    _hex,
    show_pubsub,
    "a Pub/Sub replay id is the hex `provisioner replay show` prints",
)
