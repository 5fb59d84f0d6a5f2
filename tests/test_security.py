"""Security: jobs are JSON only (a pickled job is refused, never run), and no secret or token
reaches a log line, an error message, a Salesforce field, a job record, /health or /metrics.

The canary run starts its own sandbox (with canary WHMCS credentials), its own redis-server (with
a canary password) and real subscriber, worker and health processes, drives success and failure
paths through them, then searches every output for every canary and every minted token.
"""

from __future__ import annotations

import json
import pathlib
import pickle
import secrets
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from sqlalchemy import select
from sqlalchemy.engine import make_url

from provisioner.kit.private_redis import RedisServer
from provisioner.kit.supervisor import free_port
from sandbox.app import Sandbox
from sandbox.client import SandboxAdmin
from sandbox.fixtures import demo_document
from shared import db, keys
from shared.config import DEFAULT_CHANNEL
from shared.connections import redis_client
from tests.worker_support import enqueue, event_from, failed_job_ids, wait_until

pytestmark = pytest.mark.slow


# --- a pickled job placed in the queue by hand ----------------------------------------------------


class Exploit:
    """Unpickling this creates `marker`: proof that the payload ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.parametrize("worker_class", ["simple", "fork"])
def test_a_pickled_job_is_refused_and_never_executed(
    worker_class, tmp_path, services, sandbox_admin, app_env, app_settings, redis_conn
):
    marker = tmp_path / "pwned-by-job"
    queue = Queue(app_settings.queue_name, connection=redis_conn)  # RQ's default: pickle
    queue.enqueue_call("worker.jobs.provision_order", args=(Exploit(marker),), job_id="evt-evil")
    data = redis_conn.hget("rq:job:evt-evil", "data")
    proof = tmp_path / "proof-of-run"  # as long as the marker's name: the pickle stays valid
    live = zlib.decompress(data).replace(marker.name.encode(), proof.name.encode())
    pickle.loads(live)  # the same payload, aimed elsewhere, does run when unpickled
    assert proof.exists()
    order_id = sandbox_admin.load(demo_document())["refs"]["o1"]
    enqueue(redis_conn, app_settings, event_from(sandbox_admin.approve(order_id)))

    worker = services.start("worker", app_env, "--burst", "--worker-class", worker_class)

    assert worker.proc.wait(timeout=60) == 0
    assert not marker.exists(), "the pickled payload ran"
    assert "evt-evil" in failed_job_ids(redis_conn, app_settings)
    assert Job(id="evt-evil", connection=redis_conn).get_status() == JobStatus.FAILED
    assert sandbox_admin.order(order_id)["Activation_Status__c"] == "Activated"


# --- the canary run -------------------------------------------------------------------------------


def canary(name: str) -> str:
    return f"CANARY{name}{secrets.token_hex(6)}"


@pytest.fixture
def canaries() -> dict[str, str]:
    return {
        "WHMCS identifier": canary("whmcsid"),
        "WHMCS secret": canary("whmcssecret"),
        "WHMCS access key": canary("whmcskey"),
        "Redis password": canary("redis"),
        "database password": canary("pg"),
        "dashboard password": canary("dash"),
    }


@pytest.fixture
def canary_sandbox(tmp_path, canaries, monkeypatch) -> Iterator[tuple[Sandbox, list[str]]]:
    sandbox = Sandbox.start(
        tmp_path / "sandbox",
        cometd_timeout=1.0,
        reconnect_timeout=3.0,
        whmcs_identifier=canaries["WHMCS identifier"],
        whmcs_secret=canaries["WHMCS secret"],
    )
    minted: list[str] = []
    mint = sandbox.salesforce.tokens.mint

    def recording_mint() -> str:
        token = mint()
        minted.append(token)
        return token

    sandbox.salesforce.tokens.mint = recording_mint  # every access token, to search for it later
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", sandbox.env["REQUESTS_CA_BUNDLE"])
    yield sandbox, minted
    sandbox.stop()


@pytest.fixture
def canary_redis(tmp_path, canaries) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", canaries["Redis password"])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def canary_env(canary_sandbox, canary_redis, canaries, postgres_url, postgres_engine) -> dict:
    sandbox, _minted = canary_sandbox
    url = make_url(postgres_url).set(password=canaries["database password"])  # trust auth
    return {
        **sandbox.env,
        "APP_ENV": "test",
        "LOG_LEVEL": "DEBUG",  # the most verbose the services get
        "REDIS_URL": canary_redis.url,
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "SF_EVENTS_ENABLED": "true",
        "WHMCS_API_ACCESS_KEY": canaries["WHMCS access key"],
        "WHMCS_WRITE_TIMEOUT": "2",
        "RQ_DASHBOARD_ENABLED": "true",
        "RQ_DASHBOARD_USERNAME": "ops",
        "RQ_DASHBOARD_PASSWORD": canaries["dashboard password"],
        "RECONCILE_INTERVAL": "3600",  # its query would take the sf.query fault meant for o6
    }


def status_of(admin: SandboxAdmin, order_id: str) -> tuple[str, str]:
    order = admin.order(order_id)
    return order["Activation_Status__c"], order["Activation_Error_Code__c"] or ""


def settles(admin: SandboxAdmin, order_id: str, expected: tuple[str, str]) -> None:
    wait_until(lambda: status_of(admin, order_id) == expected, timeout=45)


@pytest.mark.timeout(240)
def test_no_canary_secret_or_token_reaches_any_output(
    canary_sandbox, canary_env, canaries, services, postgres_engine
):
    sandbox, minted = canary_sandbox
    admin = SandboxAdmin(sandbox.admin_url)
    document = demo_document()
    document["salesforce"]["orders"] += [
        {**document["salesforce"]["orders"][0], "ref": f"o{n}"} for n in (5, 6)
    ]
    refs = admin.load(document)["refs"]
    conn = redis_client(canary_env["REDIS_URL"])
    port = free_port()
    procs = [
        services.start("subscriber", canary_env),
        services.start("worker", canary_env),
        services.start("worker", canary_env, "--worker-class", "fork"),
        services.start("healthcheck", canary_env, "--port", str(port)),
    ]
    wait_until(lambda: conn.hget(keys.heartbeat_key(DEFAULT_CHANNEL), "state") == b"connected")
    echo = " ".join(canaries[k] for k in ("WHMCS identifier", "WHMCS secret", "WHMCS access key"))

    # Success, then failures whose replies echo the credentials back, then a retry.
    admin.approve(refs["o1"])
    settles(admin, refs["o1"], ("Activated", ""))
    admin.approve(refs["o4"])  # its WHMCS client has no pay method
    settles(admin, refs["o4"], ("Failed", "409"))
    admin.add_fault("whmcs.AddOrder", "error", 1, message=f"Product refused for {echo}")
    admin.approve(refs["o2"])
    settles(admin, refs["o2"], ("Failed", "WHMCS_ERROR"))
    admin.add_fault("whmcs.AcceptOrder", "status", 1, status=503)
    admin.approve(refs["o3"])
    settles(admin, refs["o3"], ("Failed", "503"))
    admin.revoke_tokens()  # every process needs a new token; the subscriber starts over
    admin.approve(refs["o5"])
    settles(admin, refs["o5"], ("Activated", ""))
    admin.publish({"OrderId__c": "' OR Id != '"})
    admin.add_fault("sf.query", "status", 1, status=503)
    admin.approve(refs["o6"])
    settles(admin, refs["o6"], ("Failed", "503"))
    assert admin.retry(refs["o2"])["result"] == "published"
    settles(admin, refs["o2"], ("Activated", ""))

    replies = scrape(port, canaries["dashboard password"])
    for proc in procs:
        proc.stop()
    assert all(proc.proc.returncode == 0 for proc in procs), "every process stops cleanly"
    assert len(minted) >= 2, "the revocation made the services log in again"

    outputs = {
        **{f"log {p.log_path.name}": p.text() for p in procs},
        **replies,
        "Salesforce orders": json.dumps(admin.orders()),
        "Salesforce updates": json.dumps(admin.patches()),
        "job records": job_records(conn),
        "fulfilment records": fulfilment_records(postgres_engine),
    }
    assert "INVALID_ORDER_ID" in outputs["fulfilment records"]
    wanted = {**canaries, **{f"Salesforce token #{n}": t for n, t in enumerate(minted, 1)}}
    leaks = [
        f"{what} in {where}"
        for where, text in outputs.items()
        for what, value in wanted.items()
        if value in text
    ]
    assert leaks == [], "\n".join(leaks)


def scrape(port: int, dashboard_password: str) -> dict[str, str]:
    """/health, /metrics, and rq-dashboard's pages and job data (behind its basic auth)."""
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _answers(f"{base}/health"))
    assert requests.get(f"{base}/rq/", timeout=10).status_code == 401
    pages = {
        "/health": requests.get(f"{base}/health", timeout=10).text,
        "/metrics": requests.get(f"{base}/metrics", timeout=10).text,
    }
    auth = ("ops", dashboard_password)
    failed = "/rq/0/data/jobs/provisioning/failed/50/asc/1.json"
    paths = ["/rq/", "/rq/0/view/jobs", "/rq/0/data/queues.json", "/rq/0/data/workers.json", failed]
    for path in paths:
        reply = requests.get(f"{base}{path}", auth=auth, timeout=10)
        assert reply.status_code == 200, path
        pages[path] = reply.text
    for job in json.loads(pages[failed])["jobs"]:
        path = f"/rq/0/data/job/{job['id']}.json"
        pages[path] = requests.get(f"{base}{path}", auth=auth, timeout=10).text
    assert "provisioning_fulfilments" in pages["/metrics"]
    assert "Traceback" in "".join(pages.values()), "the failed jobs' exc_info was searched too"
    return pages


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code in (200, 503)
    except requests.RequestException:
        return False


def job_records(conn: Any) -> str:
    """Every RQ job hash (what rq-dashboard shows: args, exc_info, results)."""
    records = []
    for key in conn.scan_iter("rq:*"):
        kind = conn.type(key)
        if kind == b"hash":
            records.append(repr(conn.hgetall(key)))
        elif kind == b"stream":
            records.append(repr(conn.xrange(key)))
    for job_id in conn.lrange("rq:queue:provisioning", 0, -1):
        records.append(repr(Job.fetch(job_id.decode(), connection=conn, serializer=JSONSerializer)))
    return "\n".join(records)


def fulfilment_records(engine: Any) -> str:
    with engine.connect() as conn:
        rows = conn.execute(select(db.fulfilments)).all()
        steps = conn.execute(select(db.fulfilment_steps)).all()
    return "\n".join(repr(tuple(row)) for row in (*rows, *steps))


@pytest.mark.timeout(120)
def test_a_reply_that_echoes_the_access_token_does_not_spread_it(
    sandbox_admin, app_env, redis_conn, services, sqlite_engine
):
    """Neither Salesforce's REST errors nor its CometD errors are known to quote the bearer
    token; if one ever did, the token must not reach a log line, the order or the database."""
    order_id = sandbox_admin.load(demo_document())["refs"]["o1"]
    subscriber = services.start("subscriber", app_env)
    worker = services.start("worker", app_env)
    wait_until(lambda: redis_client_state(redis_conn) == b"connected")
    token = redis_conn.hget(keys.SF_TOKEN, "access_token").decode()
    echo = f"session {token} is locked"
    sandbox_admin.add_fault(
        "cometd.connect", "error", 1, error=f"500::{echo}", reconnect="handshake"
    )
    # Subscribed again (from the tip: no event has been stored yet) before the order goes in.
    wait_until(lambda: subscriber.text().count("Subscribed to platform event channel") == 2)
    assert "Streaming session ended" in subscriber.text()
    sandbox_admin.add_fault("sf.query", "status", 1, status=400, message=echo)
    sandbox_admin.approve(order_id)
    settles(sandbox_admin, order_id, ("Failed", "400"))
    assert "***" in sandbox_admin.order(order_id)["Activation_Error_Message__c"]
    subscriber.stop()
    worker.stop()
    outputs = {
        "subscriber log": subscriber.text(),
        "worker log": worker.text(),
        "Salesforce updates": json.dumps(sandbox_admin.patches()),
        "fulfilment records": fulfilment_records(sqlite_engine),
    }
    assert [where for where, text in outputs.items() if token in text] == []


def redis_client_state(conn: Any) -> bytes | None:
    return conn.hget(keys.heartbeat_key(DEFAULT_CHANNEL), "state")


# --- a secret JSON would escape, echoed in Salesforce and WHMCS error bodies ----------------------


def every_redis_value(conn: Any) -> str:
    """Every key and value in the database, each as text and, if it is zlib (RQ's job data),
    decompressed: what anyone with Redis access or rq-dashboard can read."""
    texts = []
    for key in conn.scan_iter("*"):
        kind = conn.type(key).decode()
        if kind == "string":
            values = [conn.get(key)]
        elif kind == "hash":
            values = [b for pair in conn.hgetall(key).items() for b in pair]
        elif kind == "list":
            values = conn.lrange(key, 0, -1)
        elif kind == "set":
            values = list(conn.smembers(key))
        elif kind == "zset":
            values = [member for member, _ in conn.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            values = [b for _, fields in conn.xrange(key) for pair in fields.items() for b in pair]
        else:
            values = []
        texts.append(key.decode(errors="replace"))
        for value in values:
            texts.append(value.decode(errors="replace"))
            try:
                texts.append(zlib.decompress(value).decode(errors="replace"))
            except zlib.error:
                pass
    return "\n".join(texts)


@pytest.mark.timeout(120)
def test_a_secret_with_quote_backslash_and_accent_echoed_in_error_bodies_goes_nowhere(
    sandbox_admin, app_env, app_settings, redis_conn, services, sqlite_engine
):
    """Issue 12: the scrubber ran on the encoded line, so \\" \\\\ \\u00e9 hid the secret, and RQ
    stored the raw error in exc_info. The canary's hex tail is in every escaped form of it."""
    tail = secrets.token_hex(8)
    canary = f'CANARY"q\\b\u00e9-{tail}'
    env = {**app_env, "WHMCS_API_ACCESS_KEY": canary}
    refs = sandbox_admin.load(demo_document())["refs"]
    sandbox_admin.add_fault("sf.query", "status", 1, status=400, message=f"refused {canary} now")
    enqueue(redis_conn, app_settings, event_from(sandbox_admin.approve(refs["o1"])))
    worker = services.start("worker", env)
    settles(sandbox_admin, refs["o1"], ("Failed", "400"))
    sandbox_admin.add_fault("whmcs.AddOrder", "error", 1, message=f"Product refused for {canary}")
    enqueue(redis_conn, app_settings, event_from(sandbox_admin.approve(refs["o2"])))
    settles(sandbox_admin, refs["o2"], ("Failed", "WHMCS_ERROR"))
    assert worker.stop() == 0

    failed = [
        Job.fetch(i, connection=redis_conn, serializer=JSONSerializer)
        for i in failed_job_ids(redis_conn, app_settings)
    ]
    assert len(failed) == 2
    for job in failed:
        exc = job.latest_result().exc_string
        assert "JobFailed" in exc and "***" in exc, exc
    assert "***" in sandbox_admin.order(refs["o2"])["Activation_Error_Message__c"]
    outputs = {
        "redis": every_redis_value(redis_conn),
        "worker log": worker.text(),
        "Salesforce orders": json.dumps(sandbox_admin.orders()),
        "Salesforce updates": json.dumps(sandbox_admin.patches()),
        "fulfilment records": fulfilment_records(sqlite_engine),
    }
    assert [where for where, text in outputs.items() if tail in text] == []
