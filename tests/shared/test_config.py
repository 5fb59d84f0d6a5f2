"""Settings: every problem reported at once, by name, with an example; groups per process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis

from shared.config import DEFAULT_CHANNEL, VARIABLES, load_settings
from shared.errors import ConfigError
from tests.fixtures.infra import write_private_key


@pytest.fixture
def key_file(tmp_path):
    return write_private_key(tmp_path / "sf.key")


@pytest.fixture
def full_env(key_file):
    return {
        "SF_LOGIN_URL": "https://login.salesforce.com",
        "SF_CLIENT_ID": "3MVG9abc",
        "SF_USERNAME": "integration@isp.example",
        "SF_PRIVATE_KEY_PATH": str(key_file),
        "SF_EVENTS_ENABLED": "true",
        "PORTAL_PRICEBOOK_ID": "01s5g00000PBK01AAA",
        "WHMCS_API_URL": "https://billing.isp.example/includes/api.php",
        "WHMCS_API_IDENTIFIER": "ident",
        "WHMCS_API_SECRET": "s3cret-value",
    }


ALL = ("salesforce", "events", "orders", "whmcs")


def test_full_environment_parses_with_defaults(full_env):
    settings = load_settings(full_env, ALL)
    assert settings.events.channel == DEFAULT_CHANNEL
    assert settings.events.replay == "LATEST"
    assert settings.salesforce.audience == "https://login.salesforce.com"
    assert settings.salesforce.token_url == "https://login.salesforce.com/services/oauth2/token"
    assert settings.database_url.startswith("sqlite:///")
    assert settings.whmcs.write_timeout == 60.0
    assert settings.warnings == ()


def test_every_missing_variable_is_named_at_once():
    with pytest.raises(ConfigError) as caught:
        load_settings({}, ALL)
    text = str(caught.value)
    required = [v.name for v in VARIABLES if v.default is None]
    for name in required:
        assert f"{name} is not set" in text
    assert "Example: SF_LOGIN_URL=https://login.salesforce.com" in text
    assert len(caught.value.problems) == len(required)


def test_a_process_checks_only_its_groups():
    settings = load_settings({}, ())  # the health app needs no credentials
    assert settings.redis_url == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("SF_EVENTS_REPLAY", "EARLIEST", "expected LATEST or ALL"),
        ("SF_EVENTS_ENABLED", "maybe", "expected true or false"),
        ("SF_LOGIN_URL", "http://login.salesforce.com", "expected a https URL"),
        ("SF_API_VERSION", "v59.0", "no leading v"),
        ("SF_API_VERSION", "36.0", "37.0 or later"),
        ("JOB_TIMEOUT", "-5", "greater than 0"),
        ("DATABASE_URL", "mysql://x", "sqlite:/// or postgresql"),
        ("SF_PROVISION_EVENT_CHANNEL", "/topic/Orders", "starting with /event/"),
        ("LOG_LEVEL", "LOUD", "DEBUG, INFO"),
    ],
)
def test_invalid_values_name_the_variable(full_env, name, value, fragment):
    with pytest.raises(ConfigError) as caught:
        load_settings({**full_env, name: value}, ALL)
    assert any(p.startswith(name) and fragment in p for p in caught.value.problems)


def test_private_key_must_be_a_pem_key(full_env, tmp_path):
    bad = tmp_path / "not-a-key"
    bad.write_text("hello")
    with pytest.raises(ConfigError, match="does not hold an unencrypted PEM private key"):
        load_settings({**full_env, "SF_PRIVATE_KEY_PATH": str(bad)}, ALL)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings({**full_env, "SF_PRIVATE_KEY_PATH": str(tmp_path / "missing")}, ALL)


def test_world_readable_key_is_a_warning(full_env, key_file):
    key_file.chmod(0o644)
    settings = load_settings(full_env, ALL)
    assert any("readable by group or others" in w for w in settings.warnings)


def test_secrets_are_listed_for_scrubbing(full_env):
    env = {**full_env, "REDIS_URL": "redis://:redispw@localhost:6379/0"}
    secrets = load_settings(env, ALL).secrets()
    assert "s3cret-value" in secrets and "redispw" in secrets
    assert "s3cret-value" not in repr(load_settings(env, ALL))


@pytest.mark.parametrize("module", ["subscriber", "worker"])
def test_process_with_empty_environment_exits_2_naming_variables(module):
    env = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    result = subprocess.run(
        [sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for name in ("SF_LOGIN_URL", "SF_CLIENT_ID", "SF_USERNAME", "SF_PRIVATE_KEY_PATH"):
        assert name in result.stderr


@pytest.mark.parametrize(
    ("url", "username"),
    [
        ("redis://redis:6379/0", None),
        ("rediss://ops@redis.example:6380/2", "ops"),
        ("redis://:old@redis:6379/0", None),  # REDIS_PASSWORD replaces the URL's own
    ],
)
def test_redis_password_is_passed_apart_and_escaped(full_env, url, username):
    password = "p@ss:w/rd%#?&x y"  # every character a URL would mangle
    env = {**full_env, "REDIS_URL": url, "REDIS_PASSWORD": password}
    settings = load_settings(env)
    parsed = redis.connection.parse_url(settings.redis_url)  # as redis-py will read it
    assert (parsed["password"], parsed.get("username")) == (password, username)
    assert password in settings.secrets()
    assert load_settings({**full_env, "REDIS_URL": url}).redis_url == url


def test_the_event_transport_defaults_to_cometd_and_pubsub_has_its_endpoint(full_env):
    events = load_settings(full_env, ALL).events
    assert (events.transport, events.pubsub_endpoint) == (
        "cometd",
        "api.pubsub.salesforce.com:7443",
    )
    assert events.pubsub_stall_timeout == 330.0
    chosen = {"SF_EVENTS_TRANSPORT": "PubSub", "SF_PUBSUB_ENDPOINT": "localhost:7443"}
    events = load_settings({**full_env, **chosen}, ALL).events
    assert (events.transport, events.pubsub_endpoint) == ("pubsub", "localhost:7443")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SF_EVENTS_TRANSPORT", "grpc"),
        ("SF_PUBSUB_ENDPOINT", "https://api.pubsub.salesforce.com"),
        ("SF_PUBSUB_ENDPOINT", "api.pubsub.salesforce.com"),
        ("SF_PUBSUB_STALL_TIMEOUT", "0"),
    ],
)
def test_a_bad_transport_setting_is_named(full_env, name, value):
    with pytest.raises(ConfigError) as caught:
        load_settings({**full_env, name: value}, ALL)
    assert name in str(caught.value)
