"""The Salesforce emulator's data model: objects, fields, types, relationships (one table each).

SOQL, describe and PATCH validation all read these tables, so an object or field added here
becomes queryable, describable and (if updateable) writable at once.

Two sources, kept apart: the standard fields every org has are written here; every custom field
(`__c`) and the platform event's fields come from the Salesforce DX source in salesforce/, the
files the admin deploys (metadata.py). A custom field changes there, never here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sandbox.salesforce import metadata


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # describe's type: id, reference, string, picklist, double, currency, boolean...
    length: int = 0
    updateable: bool = False
    nillable: bool = True
    picklist: tuple[str, ...] = ()
    restricted: bool = False  # a restricted picklist refuses values outside `picklist`
    reference_to: str = ""
    relationship: str = ""  # a reference field's parent relationship: AccountId -> Account
    given_label: str = ""  # a custom field's label from its metadata
    precision: int = 0  # a Number's digits in all (0: not limited here) ...
    scale: int = 0  # ... of which after the point

    @property
    def label(self) -> str:
        if self.given_label:
            return self.given_label
        base = self.name.removesuffix("__c")
        if self.type == "reference" and base.endswith("Id"):
            base = base[:-2] + " ID"
        return base.replace("_", " ")


@dataclass(frozen=True)
class SObject:
    name: str
    fields: tuple[Field, ...]
    children: dict[str, tuple[str, str]] = field(default_factory=dict)  # rel -> (object, fk)

    def field(self, name: str) -> Field | None:
        """The field named `name`, case-insensitively as Salesforce resolves names."""
        wanted = name.lower()
        return next((f for f in self.fields if f.name.lower() == wanted), None)

    def parent(self, relationship: str) -> Field | None:
        """The reference field behind a parent relationship name (`Account` -> AccountId)."""
        wanted = relationship.lower()
        return next((f for f in self.fields if f.relationship.lower() == wanted), None)

    def child(self, relationship: str) -> tuple[str, str, str] | None:
        """(canonical name, child object, foreign key) of a child relationship."""
        wanted = relationship.lower()
        found = ((n, o, fk) for n, (o, fk) in self.children.items() if n.lower() == wanted)
        return next(found, None)


def _ref(name: str, target: str, *, updateable: bool = False) -> Field:
    return Field(
        name, "reference", 18, updateable, reference_to=target, relationship=name.removesuffix("Id")
    )


APPROVED = "Activated"  # the Order Status value an approval sets
ORDER_STATUSES = ("Draft", APPROVED)  # a new org's Order Status values
AUDIT_FIELDS = (Field("CreatedDate", "datetime"), Field("LastModifiedDate", "datetime"))
# How describe types a custom field of each Metadata API type (a Number is a double whatever its
# scale). A type missing here fails at import: the emulator cannot silently ignore a field.
DESCRIBE_TYPES = {
    "Text": "string",
    "TextArea": "textarea",
    "LongTextArea": "textarea",
    "Picklist": "picklist",
    "Number": "double",
    "Currency": "currency",
    "Checkbox": "boolean",
    "Date": "date",
    "DateTime": "datetime",
}
PICKLIST_LENGTH = 255  # describe's length of every picklist
TEXT_TYPES = ("string", "textarea", "picklist")
NUMBER_TYPES = ("double", "currency", "int")


def from_metadata(custom: metadata.CustomField) -> Field:
    """The emulator's field for a custom field of the DX source."""
    try:
        kind = DESCRIBE_TYPES[custom.type]
    except KeyError:
        raise metadata.MetadataError(
            f"{custom.sobject}.{custom.name}: the emulator has no describe type for {custom.type}"
        ) from None
    return Field(
        custom.name,
        kind,
        PICKLIST_LENGTH if kind == "picklist" else custom.length,
        updateable=True,
        nillable=not custom.required,
        picklist=custom.values,
        restricted=custom.restricted,
        given_label=custom.label,
        precision=custom.precision,
        scale=custom.scale,
    )


def _custom(sobject: str) -> tuple[Field, ...]:
    return tuple(from_metadata(f) for f in metadata.custom_fields().get(sobject, ()))


def _standard(
    name: str, *fields: Field, children: dict[str, tuple[str, str]] | None = None
) -> SObject:
    """An object as every org has it: Id, its standard `fields`, then its custom fields from the
    DX source, then the audit fields."""
    columns = (Field("Id", "id", 18, nillable=False), *fields, *_custom(name), *AUDIT_FIELDS)
    return SObject(name, columns, children or {})


NAME = Field("Name", "string", 255, updateable=True, nillable=False)


def _flag(name: str, updateable: bool = True) -> Field:
    return Field(name, "boolean", updateable=updateable, nillable=False)


OBJECTS: dict[str, SObject] = {
    o.name: o
    for o in (
        _standard(
            "Order",
            Field("OrderNumber", "string", 30, nillable=False),
            Field("Status", "picklist", 40, True, False, ORDER_STATUSES, restricted=True),
            _ref("AccountId", "Account", updateable=True),
            _ref("Pricebook2Id", "Pricebook2", updateable=True),
            Field("EffectiveDate", "date", updateable=True, nillable=False),
            Field("TotalAmount", "currency"),
            children={"OrderItems": ("OrderItem", "OrderId")},
        ),
        _standard(
            "OrderItem",
            _ref("OrderId", "Order"),
            Field("OrderItemNumber", "string", 10, nillable=False),
            Field("Quantity", "double", updateable=True, nillable=False),
            Field("UnitPrice", "currency", updateable=True),
            Field("ListPrice", "currency"),
            Field("TotalPrice", "currency"),
            _ref("PricebookEntryId", "PricebookEntry"),
            _ref("Product2Id", "Product2"),
        ),
        _standard("Account", NAME, children={"Orders": ("Order", "AccountId")}),
        _standard(
            "Product2",
            NAME,
            Field("ProductCode", "string", 255, updateable=True),
            _flag("IsActive"),
        ),
        _standard(
            "Pricebook2",
            NAME,
            _flag("IsActive"),
            _flag("IsStandard", updateable=False),
            children={"PricebookEntries": ("PricebookEntry", "Pricebook2Id")},
        ),
        _standard(
            "PricebookEntry",
            _ref("Pricebook2Id", "Pricebook2"),
            _ref("Product2Id", "Product2"),
            Field("UnitPrice", "currency", updateable=True, nillable=False),
            _flag("IsActive"),
        ),
    )
}

EVENT_NAME = "OrderProvisionRequested__e"
# The platform event: publishable through REST, not queryable (as in Salesforce).
EVENT_OBJECT = SObject(
    EVENT_NAME,
    (
        *_custom(EVENT_NAME),
        Field("CreatedDate", "datetime"),
        Field("CreatedById", "reference", 18, reference_to="User", relationship="CreatedBy"),
    ),
)
# Objects of the DX source the emulator does not model: a custom field there would be ignored.
UNMODELLED = set(metadata.custom_fields()) - {*OBJECTS, EVENT_NAME}
if UNMODELLED:
    raise metadata.MetadataError(f"the emulator does not model {sorted(UNMODELLED)}")


def sobject(name: str) -> SObject | None:
    """The queryable object named `name`, case-insensitively."""
    wanted = name.lower()
    return next((o for o in OBJECTS.values() if o.name.lower() == wanted), None)
