"""The sandbox as a whole: admin API round trips, fixture documents, `provisioner sandbox`."""

from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
from cryptography import x509

from sandbox import fixtures
from sandbox.app import Sandbox
from sandbox.client import SandboxAdmin, SandboxAdminError
from shared.config import load_settings
from shared.sfid import is_valid_id, new_id

ENV_NAMES = {
    "SF_LOGIN_URL",
    "SF_CLIENT_ID",
    "SF_USERNAME",
    "SF_PRIVATE_KEY_PATH",
    "PORTAL_PRICEBOOK_ID",
    "WHMCS_API_URL",
    "WHMCS_API_IDENTIFIER",
    "WHMCS_API_SECRET",
    "REQUESTS_CA_BUNDLE",
    "SF_PUBSUB_ENDPOINT",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",  # grpc's own way to trust the sandbox CA
}


# --- the environment block --------------------------------------------------------------------


def test_the_env_block_names_what_the_services_read(sandbox, app_settings):
    assert set(sandbox.env) == ENV_NAMES
    assert is_valid_id(sandbox.env["PORTAL_PRICEBOOK_ID"], "Pricebook2")
    assert app_settings.salesforce.audience == sandbox.env["SF_LOGIN_URL"]
    assert app_settings.whmcs.api_url.endswith("/includes/api.php")
    assert app_settings.pricebook_id == sandbox.env["PORTAL_PRICEBOOK_ID"]
    key = Path(sandbox.env["SF_PRIVATE_KEY_PATH"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert app_settings.warnings == ()


def test_app_env_is_a_ready_service_environment(app_env, sandbox):
    assert app_env["DATABASE_URL"].startswith("sqlite:///")
    assert app_env["SF_EVENTS_ENABLED"] == "true" and app_env["APP_ENV"] == "test"
    assert os.environ["REQUESTS_CA_BUNDLE"] == sandbox.env["REQUESTS_CA_BUNDLE"]


# --- the admin API ----------------------------------------------------------------------------


def test_admin_round_trip(sandbox, sandbox_admin):
    assert sandbox_admin.health()
    loaded = sandbox_admin.load(fixtures.standard_document(orders=2))
    assert loaded["pricebook_id"] == sandbox.env["PORTAL_PRICEBOOK_ID"]
    assert loaded["refs"]["portal"] == sandbox.env["PORTAL_PRICEBOOK_ID"]
    assert set(loaded["refs"]) >= {"acme", "fibre100", "static-ip", "o1", "o2"}
    orders = sandbox_admin.orders()
    assert sorted(o["Id"] for o in orders) == sorted([loaded["refs"]["o1"], loaded["refs"]["o2"]])
    order = sandbox_admin.order(loaded["refs"]["o1"])
    assert order["Pricebook2Id"] == sandbox.env["PORTAL_PRICEBOOK_ID"]
    assert order["Status"] == "Draft" and order["Activation_Status__c"] is None
    [item] = sandbox_admin.order_items("o1")  # refs work where ids do
    assert (item["Quantity"], item["UnitPrice"], item["TotalPrice"]) == (1.0, 50.0, 50.0)
    counters = sandbox_admin.counters()
    assert set(counters) == {"salesforce", "whmcs"}
    assert counters["salesforce"]["api_calls"]["query"] == 0


def test_admin_faults_round_trip(sandbox_admin):
    sandbox_admin.add_fault("sf.query", "status", 2, status=503)
    sandbox_admin.add_fault("whmcs.AddOrder", "hang", -1, seconds=5)
    sandbox_admin.set_latency("sf.*", 0.01)
    pending = sandbox_admin.pending_faults()
    assert {"target": "sf.query", "kind": "status", "remaining": 2, "status": 503} in pending
    assert {"target": "whmcs.AddOrder", "kind": "hang", "remaining": -1, "seconds": 5} in pending
    sandbox_admin.clear_faults()
    assert sandbox_admin.pending_faults() == []


def test_reset_clears_everything(sandbox, sandbox_admin):
    refs = sandbox_admin.load(fixtures.standard_document())["refs"]
    sandbox_admin.approve(refs["o1"])
    sandbox_admin.add_fault("sf.query", "reset")
    sandbox_admin.reset()
    assert sandbox_admin.orders() == []
    assert sandbox_admin.events() == []
    assert sandbox_admin.pending_faults() == [] and sandbox_admin.fault_history() == []
    assert sandbox_admin.sf_counters()["logins"] == 0
    again = sandbox_admin.load(fixtures.standard_document())
    assert again["pricebook_id"] == sandbox.env["PORTAL_PRICEBOOK_ID"]  # the env stays true


@pytest.mark.parametrize(
    ("op", "body", "status"),
    [
        ("nope", {}, 404),
        ("sf/nope", {}, 400),
        ("sf/approve", {}, 400),
        ("sf/order", {"order_id": "8015g00000NOPE1AAA"}, 400),
        ("faults/add", {"kind": "status"}, 400),
        ("load", {"salesforce": {"orders": [{"account": "nobody"}]}}, 400),
        ("load", {"salesforce": {"accounts": [{"Name": "X", "Nope__c": 1}]}}, 400),
        ("load", {"salesforce": {"products": [{"Name": "X", "WH_Product_ID__c": "one"}]}}, 400),
        ("load", {"salesforce": {"orders": [{"items": [{"Quantity": 1}]}]}}, 400),
        ("load", {"salesforce": {"accounts": [{"Id": "garbage"}]}}, 400),
        ("load", {"salesforce": {"contacts": []}}, 400),
        ("load", {"sales": {}}, 400),
    ],
)
def test_admin_refusals(sandbox_admin, op, body, status):
    with pytest.raises(SandboxAdminError) as caught:
        sandbox_admin.call(op, body)
    assert caught.value.status == status
    assert caught.value.error


def test_a_refused_load_leaves_nothing_behind(sandbox_admin):
    document = fixtures.standard_document(orders=2)
    document["salesforce"]["orders"][1]["account"] = "nobody"
    with pytest.raises(SandboxAdminError):
        sandbox_admin.load(document)
    assert sandbox_admin.orders() == []
    assert sandbox_admin.load(fixtures.standard_document())["refs"]["o1"]


def test_admin_refuses_a_body_that_is_not_json(sandbox):
    reply = requests.post(f"{sandbox.admin_url}/admin/load", data="{nope", timeout=5)
    assert reply.status_code == 400 and "not JSON" in reply.json()["error"]
    assert requests.get(f"{sandbox.admin_url}/admin/health", timeout=5).json() == {"ok": True}


# --- fixture documents ------------------------------------------------------------------------


def test_loads_accumulate_and_refer_to_earlier_refs(sandbox, sandbox_admin):
    first = sandbox_admin.load(fixtures.standard_document(orders=1))["refs"]
    given_id = new_id("Order")
    second = sandbox_admin.load(
        {
            "salesforce": {
                "pricebooks": [{"ref": "partner", "Name": "Partner"}],
                "products": [{"ref": "hidden", "Name": "Hidden", "in_pricebook": False}],
                "orders": [
                    {"ref": "p1", "account": "acme", "pricebook": "partner",
                     "items": [{"product": "fibre100", "UnitPrice": 40.0}]},
                    {"ref": "given", "Id": given_id, "account": first["acme"],
                     "pricebook": "partner", "Activation_Status__c": "Failed",
                     "Activation_Error_Code__c": "409",
                     "items": [{"product": "hidden", "Quantity": 3, "UnitPrice": 2.5}]},
                ],
            }
        }
    )["refs"]  # fmt: skip
    assert second["o1"] == first["o1"] and second["given"] == given_id
    partner_order = sandbox_admin.order("p1")
    assert partner_order["Pricebook2Id"] == second["partner"] != sandbox.env["PORTAL_PRICEBOOK_ID"]
    given = sandbox_admin.order(given_id)
    assert given["AccountId"] == first["acme"] and given["Activation_Error_Code__c"] == "409"
    assert given["TotalAmount"] == 7.5
    assert sandbox.salesforce.store.get("Product2", second["hidden"])["IsActive"] is True
    entries = sandbox.salesforce.store.records("PricebookEntry")
    portal = {e["Product2Id"] for e in entries if e["Pricebook2Id"] == first["portal"]}
    assert {first["fibre100"], first["static-ip"]} <= portal
    assert second["hidden"] not in portal


def test_the_demo_document_loads_in_both_emulators(sandbox, sandbox_admin):
    loaded = sandbox_admin.load(fixtures.demo_document())
    assert loaded["whmcs"]["clients"] == 2
    assert len(sandbox_admin.orders()) == 4
    assert len(sandbox_admin.order_items("o2")) == 2


def test_fixture_files_are_checked(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(fixtures.FixtureError):
        fixtures.read(path)
    path.write_text(json.dumps(fixtures.standard_document()))
    assert fixtures.read(path) == fixtures.standard_document()


# --- certificates and hosts -------------------------------------------------------------------


def test_a_public_host_is_in_the_urls_and_the_certificate(tmp_path):
    sandbox = Sandbox.start(tmp_path / "state", public_host="sandbox.internal")
    try:
        assert sandbox.env["SF_LOGIN_URL"].startswith("https://sandbox.internal:")
        assert sandbox.env["WHMCS_API_URL"].startswith("https://sandbox.internal:")
        assert sandbox.salesforce.base_url == sandbox.env["SF_LOGIN_URL"]
        cert = x509.load_pem_x509_certificate(sandbox.material.server_cert_path.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "sandbox.internal" in names.get_values_for_type(x509.DNSName)
        assert "localhost" in names.get_values_for_type(x509.DNSName)
    finally:
        sandbox.stop()


# --- `provisioner sandbox` as a real process --------------------------------------------------


def _read_env_block(process: subprocess.Popen, timeout: float) -> dict[str, str]:
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in process.stdout:
            lines.put(line)
        lines.put(None)  # the process closed its stdout: it has exited

    threading.Thread(target=pump, daemon=True).start()
    env: dict[str, str] = {}
    while "SANDBOX_ADMIN_URL" not in env:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            line = None
        if line is None:
            raise AssertionError(f"no env block; printed so far: {env}; exit {process.poll()}")
        name, _, value = line.rstrip("\n").partition("=")
        env[name] = shlex.split(value)[0] if value else ""
    return env


@pytest.fixture
def sandbox_process(tmp_path):
    fixture_file = tmp_path / "fixtures.json"
    fixture_file.write_text(json.dumps(fixtures.standard_document(orders=1)))
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    process = subprocess.Popen(
        [sys.executable, "-m", "provisioner.cli", "sandbox", "--state-dir",
         str(tmp_path / "state dir"), "--fixtures", str(fixture_file), "--cometd-timeout", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**base, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    yield process, tmp_path / "state dir"
    if process.poll() is None:
        process.kill()
    process.communicate(timeout=10)


@pytest.mark.slow
def test_provisioner_sandbox_prints_a_working_env_block(sandbox_process, monkeypatch, tmp_path):
    process, state_dir = sandbox_process
    env = _read_env_block(process, timeout=60)
    assert set(env) == {*ENV_NAMES, "SANDBOX_ADMIN_URL"}
    assert Path(env["REQUESTS_CA_BUNDLE"]).parent == state_dir.resolve()
    assert stat.S_IMODE((state_dir / "sandbox.env").stat().st_mode) == 0o600
    # The block is what a shell gets from sourcing <state>/sandbox.env (paths with spaces too).
    shell = subprocess.run(
        ["bash", "-c", f'set -a; . "{state_dir / "sandbox.env"}"; env -0'],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    sourced = dict(item.split("=", 1) for item in shell.stdout.split("\0") if "=" in item)
    assert {name: sourced[name] for name in env} == env
    settings = load_settings(env, needs={"salesforce", "orders", "whmcs"})
    assert settings.salesforce.login_url == env["SF_LOGIN_URL"]
    assert settings.events.pubsub_endpoint == env["SF_PUBSUB_ENDPOINT"]
    assert env["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] == env["REQUESTS_CA_BUNDLE"]

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", env["REQUESTS_CA_BUNDLE"])
    admin = SandboxAdmin(env["SANDBOX_ADMIN_URL"])
    [order] = admin.orders()  # the fixture file was loaded
    event = admin.approve(order["Id"])
    assert event["payload"]["OrderId__c"] == order["Id"]
    admin.close()

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pricebook-id", "nope"], "is not a Pricebook2 id"),
        (["--fixtures", "/nonexistent/fixtures.json"], "cannot read fixture file"),
    ],
)
def test_provisioner_sandbox_refuses_bad_arguments(tmp_path, args, message):
    done = subprocess.run(
        [sys.executable, "-m", "provisioner.cli", "sandbox", "--state-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert message in done.stderr
