"""The Salesforce emulator's data model: objects, fields, types, relationships (one table each).

SOQL, describe and PATCH validation all read these tables, so an object or field added here
becomes queryable, describable and (if updateable) writable at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Field:
    name: str
    type: (
        str  # describe's type: id, reference, string, picklist, double, currency, boolean, date...
    )
    length: int = 0
    updateable: bool = False
    nillable: bool = True
    picklist: tuple[str, ...] = ()
    restricted: bool = False  # a restricted picklist refuses values outside `picklist`
    reference_to: str = ""
    relationship: str = (
        ""  # the parent relationship name of a reference field: AccountId -> Account
    )

    @property
    def label(self) -> str:
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
        for name, (sobject, fk) in self.children.items():
            if name.lower() == wanted:
                return name, sobject, fk
        return None


def _ref(name: str, target: str, *, updateable: bool = False) -> Field:
    return Field(
        name, "reference", 18, updateable, reference_to=target, relationship=name.removesuffix("Id")
    )


ACTIVATION_STATUSES = ("Activating", "Activated", "Failed")
ORDER_STATUSES = ("Draft", "Activated")
BILLING_CYCLES = ("Monthly", "Quarterly", "Semi-Annually", "Annually", "Biennially", "Triennially")
AUDIT_FIELDS = (Field("CreatedDate", "datetime"), Field("LastModifiedDate", "datetime"))

OBJECTS: dict[str, SObject] = {
    o.name: o
    for o in (
        SObject(
            "Order",
            (
                Field("Id", "id", 18, nillable=False),
                Field("OrderNumber", "string", 30, nillable=False),
                Field(
                    "Status",
                    "picklist",
                    40,
                    updateable=True,
                    nillable=False,
                    picklist=ORDER_STATUSES,
                    restricted=True,
                ),
                _ref("AccountId", "Account", updateable=True),
                _ref("Pricebook2Id", "Pricebook2", updateable=True),
                Field("EffectiveDate", "date", updateable=True, nillable=False),
                Field("TotalAmount", "currency"),
                Field(
                    "Activation_Status__c",
                    "picklist",
                    255,
                    updateable=True,
                    picklist=ACTIVATION_STATUSES,
                    restricted=True,
                ),
                Field("Activation_Error_Code__c", "string", 40, updateable=True),
                Field("Activation_Error_Message__c", "string", 255, updateable=True),
                Field("WHMCS_Order_ID__c", "string", 20, updateable=True),
                *AUDIT_FIELDS,
            ),
            {"OrderItems": ("OrderItem", "OrderId")},
        ),
        SObject(
            "OrderItem",
            (
                Field("Id", "id", 18, nillable=False),
                _ref("OrderId", "Order"),
                Field("OrderItemNumber", "string", 10, nillable=False),
                Field("Quantity", "double", updateable=True, nillable=False),
                Field("UnitPrice", "currency", updateable=True),
                Field("ListPrice", "currency"),
                Field("TotalPrice", "currency"),
                _ref("PricebookEntryId", "PricebookEntry"),
                _ref("Product2Id", "Product2"),
                *AUDIT_FIELDS,
            ),
        ),
        SObject(
            "Account",
            (
                Field("Id", "id", 18, nillable=False),
                Field("Name", "string", 255, updateable=True, nillable=False),
                Field("WHMCS_Client_ID__c", "string", 20, updateable=True),
                *AUDIT_FIELDS,
            ),
            {"Orders": ("Order", "AccountId")},
        ),
        SObject(
            "Product2",
            (
                Field("Id", "id", 18, nillable=False),
                Field("Name", "string", 255, updateable=True, nillable=False),
                Field("ProductCode", "string", 255, updateable=True),
                Field("IsActive", "boolean", updateable=True, nillable=False),
                Field("WH_Product_ID__c", "double", updateable=True),
                Field(
                    "Billing_Cycle__c", "picklist", 255, updateable=True, picklist=BILLING_CYCLES
                ),
                *AUDIT_FIELDS,
            ),
        ),
        SObject(
            "Pricebook2",
            (
                Field("Id", "id", 18, nillable=False),
                Field("Name", "string", 255, updateable=True, nillable=False),
                Field("IsActive", "boolean", updateable=True, nillable=False),
                Field("IsStandard", "boolean", nillable=False),
                *AUDIT_FIELDS,
            ),
            {"PricebookEntries": ("PricebookEntry", "Pricebook2Id")},
        ),
        SObject(
            "PricebookEntry",
            (
                Field("Id", "id", 18, nillable=False),
                _ref("Pricebook2Id", "Pricebook2"),
                _ref("Product2Id", "Product2"),
                Field("UnitPrice", "currency", updateable=True, nillable=False),
                Field("IsActive", "boolean", updateable=True, nillable=False),
                *AUDIT_FIELDS,
            ),
        ),
    )
}

# The platform event: publishable through REST, not queryable (as in Salesforce).
EVENT_OBJECT = SObject(
    "OrderProvisionRequested__e",
    (
        Field("OrderId__c", "string", 18, updateable=True),
        Field("CreatedDate", "datetime"),
        Field("CreatedById", "reference", 18, reference_to="User", relationship="CreatedBy"),
    ),
)


def sobject(name: str) -> SObject | None:
    """The queryable object named `name`, case-insensitively."""
    wanted = name.lower()
    return next((o for o in OBJECTS.values() if o.name.lower() == wanted), None)
