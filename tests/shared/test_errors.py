"""Error messages as Salesforce stores them: one line, no secrets, 255 UTF-16 units at most."""

from __future__ import annotations

import pytest

from shared import errors


@pytest.mark.parametrize(
    ("text", "expected_units"),
    [("short", 5), ("x" * 300, 255), ("😀" * 200, 255), ("a\n  b\tc", 5)],
)
def test_short_message_fits_the_field(text, expected_units):
    message = errors.short_message(text)
    assert "\n" not in message
    assert len(message.encode("utf-16-le")) // 2 <= 255
    assert len(message.encode("utf-16-le")) // 2 >= expected_units - 1


def test_short_message_removes_secrets():
    assert errors.short_message("auth failed for s3cr3t", ("s3cr3t",)) == "auth failed for ***"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidEvent("x"), "INVALID_ORDER_ID"),
        (errors.PaymentMethodMissing("x"), "409"),
        (errors.UpstreamTimeout("x", system="whmcs"), "ETIMEOUT"),
        (errors.HttpStatusError("x", system="whmcs", status=503), "503"),
        (errors.MappingError("x", code="UNMAPPED_PRODUCT"), "UNMAPPED_PRODUCT"),
        (errors.WorkerLost("x"), "WORKER_LOST"),
        (errors.SchemaError("x"), "SCHEMA"),
    ],
)
def test_every_error_knows_its_code(error, code):
    assert isinstance(error, errors.ProvisioningError)
    assert error.code == code
