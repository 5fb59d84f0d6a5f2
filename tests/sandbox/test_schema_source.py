"""The Salesforce emulator's custom fields are the DX source's: same names, types, lengths,
picklist values, restriction and requiredness, and its write checks follow them."""

from __future__ import annotations

import shutil

import pytest

from sandbox.salesforce import metadata, rules
from sandbox.salesforce.schema import (
    DESCRIBE_TYPES,
    EVENT_NAME,
    EVENT_OBJECT,
    OBJECTS,
    from_metadata,
)
from tests import salesforce_source as src

CUSTOM = [f for fields in metadata.custom_fields().values() for f in fields]


def emulated(custom: metadata.CustomField):
    owner = EVENT_OBJECT if custom.sobject == EVENT_NAME else OBJECTS[custom.sobject]
    return owner, owner.field(custom.name)


def test_the_emulator_reads_the_deployed_source():
    assert metadata.objects_dir() == src.SOURCE / "objects"
    assert {f.name for f in CUSTOM} >= {"Activation_Status__c", "OrderId__c", "Billing_Cycle__c"}


@pytest.mark.parametrize("custom", CUSTOM, ids=[f"{f.sobject}.{f.name}" for f in CUSTOM])
def test_every_custom_field_is_emulated_as_deployed(custom):
    _, field = emulated(custom)
    assert field is not None
    assert field.type == DESCRIBE_TYPES[custom.type]
    assert field.label == custom.label
    assert field.picklist == custom.values and field.restricted == custom.restricted
    assert field.nillable == (not custom.required)
    if custom.type != "Picklist":
        assert (field.length, field.precision, field.scale) == (
            custom.length,
            custom.precision,
            custom.scale,
        )


@pytest.mark.parametrize("custom", CUSTOM, ids=[f"{f.sobject}.{f.name}" for f in CUSTOM])
def test_writes_are_checked_against_the_deployed_definition(custom):
    owner, _ = emulated(custom)

    def write(value):
        return rules.check_write(owner, {custom.name: value}, lambda f: True)

    if custom.values:
        assert write(custom.values[-1]) == ({custom.name: custom.values[-1]}, [])
    if custom.restricted:
        codes = [p.code for p in write(custom.values[0] + " (renamed)")[1]]
        assert codes == ["INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"]
    if custom.type in ("Text", "TextArea", "LongTextArea"):
        assert write("x" * custom.length)[1] == []
        assert [p.code for p in write("x" * (custom.length + 1))[1]] == ["STRING_TOO_LONG"]
    if custom.type == "Number":
        largest = 10 ** (custom.precision - custom.scale) - 1
        assert write(largest)[1] == []
        assert [p.code for p in write(largest + 1)[1]] == ["NUMBER_OUTSIDE_VALID_RANGE"]
    if custom.required:
        assert [p.code for p in write(None)[1]] == ["REQUIRED_FIELD_MISSING"]


def test_a_changed_definition_changes_what_the_emulator_accepts(tmp_path):
    objects = tmp_path / "objects"
    shutil.copytree(src.SOURCE / "objects", objects)
    path = objects / "Order/fields/Activation_Error_Message__c.field-meta.xml"
    path.write_text(path.read_text().replace("<length>255</length>", "<length>100</length>"))
    changed = next(
        f for f in metadata.custom_fields(objects)["Order"] if f.name == path.name.split(".")[0]
    )
    assert from_metadata(changed).length == 100


def test_a_field_type_the_emulator_cannot_describe_is_refused():
    bad = metadata.CustomField("Order", "Geo__c", "Location", "Geo")
    with pytest.raises(metadata.MetadataError, match="no describe type for Location"):
        from_metadata(bad)


def test_a_file_whose_full_name_differs_from_its_name_is_refused(tmp_path):
    source = src.SOURCE / "objects/Order/fields/WHMCS_Order_ID__c.field-meta.xml"
    renamed = tmp_path / "WHMCS_Order_Number__c.field-meta.xml"
    renamed.write_text(source.read_text())
    with pytest.raises(metadata.MetadataError, match="does not match the file name"):
        metadata.read_field("Order", renamed)
