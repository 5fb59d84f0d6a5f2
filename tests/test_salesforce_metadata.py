"""The Salesforce DX source and the code agree: every field the code reads or writes is deployed
with a compatible type and length, every value written is allowed, and the Flows, the action and
the permission sets name what the worker and subscriber use. No org, no network.
"""

from __future__ import annotations

import re

import pytest

from sandbox.salesforce import metadata
from sandbox.salesforce.schema import EVENT_NAME, OBJECTS, ORDER_STATUSES
from shared import jobpayload
from tests import salesforce_source as src
from worker import mapping, steps

FIELDS = metadata.custom_fields()
# How the code handles each custom type it reads: JSON strings or numbers only.
SCALAR_TYPES = ("Text", "TextArea", "LongTextArea", "Picklist", "Number")
TEXT_TYPES = ("Text", "TextArea", "LongTextArea")
WHMCS_ID_DIGITS = len(str(2**31 - 1))  # WHMCS ids are MySQL INT columns


def custom(sobject: str, name: str) -> metadata.CustomField | None:
    return next((f for f in FIELDS.get(sobject, ()) if f.name == name), None)


def selections() -> list[tuple[str, src.Selected]]:
    return [
        (where, selected)
        for where, query in src.soql_queries()
        for selected in sorted(src.selected_fields(query), key=lambda s: (s.sobject, s.field))
    ]


SELECTIONS = selections()
WRITES = src.writes()


def test_the_code_sends_the_queries_and_writes_this_test_reads():
    # A refactor that hid every query or PATCH from the scan would make the checks below vacuous.
    wheres = {where for where, _ in SELECTIONS}
    assert {"worker.steps.order_soql", "worker.reaper._mark_failed"} <= wheres
    assert {(w.sobject, w.field) for w in WRITES} >= {("Order", "Activation_Status__c")}


def test_every_write_is_one_the_checks_can_read():
    # A PATCH body built elsewhere and passed in would escape every check below: write it as a
    # dict literal at the call, as steps.sf_success_update does.
    assert src.unreadable_writes() == []


@pytest.mark.parametrize(
    ("where", "selected"), SELECTIONS, ids=[f"{w}:{s.sobject}.{s.field}" for w, s in SELECTIONS]
)
def test_every_custom_field_the_code_selects_is_deployed_with_a_readable_type(where, selected):
    if not selected.field.endswith("__c"):
        # A standard field: it exists in every org; the emulator's table says which ones.
        assert OBJECTS[selected.sobject].field(selected.field) is not None
        return
    field = custom(selected.sobject, selected.field)
    assert field is not None, f"{where} selects {selected.sobject}.{selected.field}: not deployed"
    assert field.type in SCALAR_TYPES


@pytest.mark.parametrize(
    "write", WRITES, ids=[f"{w.module}:{w.sobject}.{w.field}={w.value}" for w in WRITES]
)
def test_every_field_the_code_writes_is_deployed_and_takes_the_value(write):
    field = custom(write.sobject, write.field)
    assert field is not None, f"{write.module} writes {write.sobject}.{write.field}: not deployed"
    if write.kind == "none":
        assert not field.required, "the code clears a required field"
    elif write.kind == "constant":
        if field.type == "Picklist":
            assert write.value in field.values
        else:
            assert field.type in TEXT_TYPES and len(str(write.value)) <= field.length
    elif write.kind == "truncated":
        # Truncating to anything but the field's length either loses text the field could hold
        # or sends text Salesforce refuses (STRING_TOO_LONG fails the whole PATCH).
        assert field.type in TEXT_TYPES and write.value == field.length
    else:  # str(<WHMCS id>)
        assert field.type in TEXT_TYPES and field.length >= WHMCS_ID_DIGITS


def test_the_statuses_the_worker_writes_are_the_restricted_picklist():
    field = custom("Order", "Activation_Status__c")
    assert field.type == "Picklist" and field.restricted
    assert set(field.values) == {steps.ACTIVATING, steps.ACTIVATED, steps.FAILED}


def test_every_billing_cycle_value_is_one_the_worker_maps_and_every_cycle_has_one():
    field = custom("Product2", "Billing_Cycle__c")
    assert field.type == "Picklist" and field.restricted
    mapped = [mapping.normalize_cycle(v) for v in field.values]
    assert None not in mapped, f"unmapped values: {field.values}"
    assert sorted(set(mapped)) == sorted(set(mapping.BILLING_CYCLES.values()))


@pytest.mark.parametrize(("sobject", "name"), [("Product2", "WH_Product_ID__c")])
def test_a_whmcs_id_field_holds_only_ids_the_worker_accepts(sobject, name):
    field = custom(sobject, name)
    assert field.type == "Number" and field.scale == 0
    assert field.precision >= WHMCS_ID_DIGITS
    assert mapping.parse_positive_int(float(10**field.precision - 1)) is not None


def test_the_account_client_field_of_the_default_setting_is_deployed():
    name = src.default("SF_ACCOUNT_CLIENT_FIELD")
    field = custom("Account", name)
    assert field is not None, f"SF_ACCOUNT_CLIENT_FIELD defaults to Account.{name}: not deployed"
    assert field.type in (*TEXT_TYPES, "Number") and (field.type == "Number" or field.length >= 10)


def test_the_event_of_the_default_channel_is_high_volume_and_published_after_commit():
    channel = src.default("SF_PROVISION_EVENT_CHANNEL")
    assert channel == f"/event/{EVENT_NAME}"
    event = metadata.platform_event(EVENT_NAME)
    # After commit: the worker reads the committed Order, and a rolled-back approval must not
    # start a WHMCS order.
    assert (event.event_type, event.publish_behavior) == ("HighVolume", "PublishAfterCommit")


def test_every_event_field_the_subscriber_reads_exists():
    read = {
        text
        for module, _, text in src.string_literals()
        # The event's fields are read where the job payload is built from it.
        if module.startswith(("subscriber.", "shared.jobpayload")) and re.fullmatch(r"\w+__c", text)
    }
    assert read, "the subscriber reads no event field: the scan is broken"
    event_fields = {f.name: f for f in FIELDS[EVENT_NAME]}
    assert read <= set(event_fields)
    order_id = event_fields["OrderId__c"]
    assert order_id.type == "Text" and order_id.required
    assert order_id.length <= jobpayload.MAX_ORDER_ID  # the job payload passes the whole id on


def test_every_custom_name_the_code_mentions_is_deployed():
    # Catches a rename the queries and writes do not show: a doctor check, a fixture, a message.
    deployed = {f.name for fields in FIELDS.values() for f in fields} | {EVENT_NAME}
    mentioned = {
        (module, name)
        for module, _, text in src.string_literals()
        for name in re.findall(r"\b[A-Za-z]\w*__[ce]\b", text)
    }
    assert {(m, n) for m, n in mentioned if n not in deployed} == set()


def test_every_custom_name_the_source_mentions_is_deployed():
    # Flows, the Apex test, permission sets, the action: a field renamed in its own file only.
    deployed = {f.name for fields in FIELDS.values() for f in fields} | {EVENT_NAME}
    files = [p for p in src.SOURCE.rglob("*") if p.is_file() and "objects" not in p.parts]
    mentioned = {
        (p.name, name)
        for p in files
        for name in re.findall(r"\b[A-Za-z]\w*__[ce]\b", p.read_text())
    }
    assert mentioned, "the scan found nothing"
    assert {(p, n) for p, n in mentioned if n not in deployed} == set()


# --- Flows and the action -------------------------------------------------------------------


def test_approval_flow_sets_activating_and_clears_the_errors_on_an_approved_order():
    root = src.flow("Order_Set_Activating_On_Approval")
    start = root.find("md:start", src.NS)
    assert src.texts(start, "md:object") == ["Order"]
    assert src.texts(start, "md:triggerType") == ["RecordBeforeSave"]
    assert src.texts(start, "md:doesRequireRecordChangedToMeetCriteria") == ["true"]
    filters = {
        src.texts(f, "md:field")[0]: (src.texts(f, "md:operator")[0], src.texts(f, "md:value/*")[0])
        for f in start.findall("md:filters", src.NS)
    }
    # Approval, as the sandbox's approve and the runbook use it: the Order's Status becomes the
    # activated value of a new org's Status picklist, on an order never provisioned.
    approved = [s for s in ORDER_STATUSES if s != "Draft"]
    assert filters == {
        "Status": ("EqualTo", approved[0]),
        "Activation_Status__c": ("IsNull", "true"),
    }
    assert assignments(root, "md:assignments/md:assignmentItems", "md:assignToReference") == {
        "$Record.Activation_Status__c": steps.ACTIVATING,
        "$Record.Activation_Error_Code__c": "$GlobalConstant.EmptyString",
        "$Record.Activation_Error_Message__c": "$GlobalConstant.EmptyString",
    }


def test_publish_flow_is_the_one_place_the_event_goes_out_with_the_order_id():
    root = src.flow("Order_Publish_Provision_Request")
    start = root.find("md:start", src.NS)
    assert src.texts(start, "md:triggerType") == ["RecordAfterSave"]
    assert src.texts(start, "md:doesRequireRecordChangedToMeetCriteria") == ["true"]
    assert src.texts(start, "md:filters/md:field") == ["Activation_Status__c"]
    assert src.texts(start, "md:filters/md:value/md:stringValue") == [steps.ACTIVATING]
    creates = root.findall("md:recordCreates", src.NS)
    assert [src.texts(c, "md:object") for c in creates] == [[EVENT_NAME]]
    assert assignments(creates[0], "md:inputAssignments", "md:field") == {
        "OrderId__c": "$Record.Id"
    }
    assert src.texts(creates[0], "md:faultConnector/md:targetReference") == ["Mark_Publish_Failed"]
    publishing = [
        p.name
        for p in src.SOURCE.glob("flows/*.flow-meta.xml")
        if EVENT_NAME in src.texts(src.parse(p), "md:recordCreates/md:object")
    ]
    assert publishing == ["Order_Publish_Provision_Request.flow-meta.xml"]


def test_publish_failure_marks_the_order_failed_within_the_field_lengths():
    root = src.flow("Order_Publish_Provision_Request")
    update = root.find("md:recordUpdates", src.NS)
    values = assignments(update, "md:inputAssignments", "md:field")
    assert values["Activation_Status__c"] == steps.FAILED
    code = custom("Order", "Activation_Error_Code__c")
    assert len(values["Activation_Error_Code__c"]) <= code.length
    message = custom("Order", "Activation_Error_Message__c")
    formula = src.texts(root, "md:formulas/md:expression")
    assert formula == [f"LEFT({{!$Flow.FaultMessage}}, {message.length})"]


def test_retry_action_says_already_in_progress_or_requests_provisioning():
    action = src.parse(src.SOURCE / "quickActions" / "Order.Provision_Retry.quickAction-meta.xml")
    assert src.texts(action, "md:type") == ["Flow"]
    assert src.texts(action, "md:label") == ["Provision / Retry"]
    root = src.flow(src.texts(action, "md:flowDefinition")[0])
    assert src.texts(root, "md:processType") == ["Flow"]
    rule = root.find("md:decisions/md:rules", src.NS)
    assert src.texts(rule, "md:conditions/md:rightValue/md:stringValue") == [steps.ACTIVATING]
    target = src.texts(rule, "md:connector/md:targetReference")[0]
    screen = next(
        s for s in root.findall("md:screens", src.NS) if src.texts(s, "md:name") == [target]
    )
    assert "Already in progress" in src.texts(screen, "md:fields/md:fieldText")[0]
    update = root.find("md:recordUpdates", src.NS)
    assert assignments(update, "md:inputAssignments", "md:field") == {
        "Activation_Status__c": steps.ACTIVATING,
        "Activation_Error_Code__c": "$GlobalConstant.EmptyString",
        "Activation_Error_Message__c": "$GlobalConstant.EmptyString",
    }
    # It publishes nothing itself: the change to Activating makes the publish Flow fire.
    assert root.find("md:recordCreates", src.NS) is None


def test_every_field_a_flow_names_exists():
    for path in src.SOURCE.glob("flows/*.flow-meta.xml"):
        root, text = src.parse(path), path.read_text()
        trigger = src.texts(root, "md:start/md:object") or [None]
        lookups = {
            src.texts(e, "md:name")[0]: src.texts(e, "md:object")[0]
            for e in root.findall("md:recordLookups", src.NS)
        }
        named = [(trigger[0], name) for name in re.findall(r"\$Record\.(\w+)", text)]
        named += [
            (lookups[e], name)
            for e, name in re.findall(r"\b(\w+)\.(\w+__c)\b", text)
            if e in lookups
        ]
        for element in root:
            on_record = src.texts(element, "md:inputReference") == ["$Record"]
            owner = src.texts(element, "md:object") or ([trigger[0]] if on_record else [None])
            for child in (
                "md:filters/md:field",
                "md:inputAssignments/md:field",
                "md:queriedFields",
            ):
                named += [(owner[0], name) for name in src.texts(element, child)]
        assert named, path.name
        missing = [(o, n) for o, n in named if not field_exists(o, n)]
        assert missing == [], path.name


# --- the permission sets --------------------------------------------------------------------


def test_integration_permission_set_grants_exactly_what_the_code_uses():
    root = src.permission_set("Provisioning_Integration")
    assert src.texts(root, "md:userPermissions/md:name") == ["ApiEnabled"]
    read = {s.sobject for _, s in SELECTIONS} | {EVENT_NAME}
    granted_objects = map(permissions, root.findall("md:objectPermissions", src.NS))
    objects = {granted["object"]: granted for granted in granted_objects}
    assert set(objects) == read
    edited = {w.sobject for w in WRITES}
    for name, granted in objects.items():
        assert granted["allowRead"] and not granted["allowCreate"] and not granted["allowDelete"]
        assert granted["allowEdit"] == (name in edited), name
        assert not granted["modifyAllRecords"]
    fields = {
        src.texts(f, "md:field")[0]: src.texts(f, "md:editable")[0] == "true"
        for f in root.findall("md:fieldPermissions", src.NS)
    }
    custom_read = {f"{s.sobject}.{s.field}" for _, s in SELECTIONS if s.field.endswith("__c")} | {
        f"{w.sobject}.{w.field}" for w in WRITES
    }
    assert set(fields) == custom_read
    assert {f for f, editable in fields.items() if editable} == {
        f"{w.sobject}.{w.field}" for w in WRITES
    }


def test_no_permission_set_grants_a_required_field():
    # Salesforce refuses field permissions on a required field at deploy.
    required = {f"{f.sobject}.{f.name}" for fs in FIELDS.values() for f in fs if f.required}
    for path in src.SOURCE.glob("permissionsets/*.permissionset-meta.xml"):
        granted = set(src.texts(src.parse(path), "md:fieldPermissions/md:field"))
        assert not granted & required, path.name


def test_operator_permission_set_runs_the_retry_flow_and_edits_nothing():
    root = src.permission_set("Provisioning_Operator")
    assert src.texts(root, "md:flowAccesses/md:flow") == ["Provision_Retry"]
    assert src.texts(root, "md:fieldPermissions/md:editable") == ["false"] * 4
    assert src.texts(root, "md:objectPermissions/md:allowEdit") == ["false"]
    retry = src.flow("Provision_Retry")
    assert src.texts(retry, "md:isAdditionalPermissionRequiredToRun") == ["true"]


def test_connected_app_pre_authorizes_the_integration_permission_set():
    path = src.PROJECT / "connected-app/main/default/connectedApps"
    root = src.parse(path / "Provisioning_Integration.connectedApp-meta.xml")
    assert src.texts(root, "md:permissionSetName") == ["Provisioning_Integration"]
    assert src.texts(root, "md:oauthConfig/md:isAdminApproved") == ["true"]
    assert src.texts(root, "md:oauthConfig/md:scopes") == ["Api"]
    # The certificate is each environment's own and is uploaded by hand (README).
    assert root.find("md:oauthConfig/md:certificate", src.NS) is None


# --- helpers --------------------------------------------------------------------------------


def assignments(root, path: str, key: str) -> dict[str, str]:
    """{target: value} of a Flow's assignment items or input assignments."""
    return {
        src.texts(item, key)[0]: src.texts(item, "md:value/*")[0]
        for item in root.findall(path, src.NS)
    }


def permissions(element) -> dict[str, bool]:
    values = {src.local(child.tag): (child.text or "").strip() for child in element}
    name = values.pop("object")
    return {"object": name, **{k: v == "true" for k, v in values.items()}}


def field_exists(sobject: str | None, name: str) -> bool:
    if sobject == EVENT_NAME:
        return custom(sobject, name) is not None
    if sobject is None:
        return False
    if name.endswith("__c"):
        return custom(sobject, name) is not None
    return sobject in OBJECTS and OBJECTS[sobject].field(name) is not None
