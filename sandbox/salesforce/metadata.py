"""The custom fields and platform events of the Salesforce DX source (salesforce/), from its XML.

What is deployed to the org is defined once, in those files. The emulator's schema (schema.py)
takes every custom field from here, and the tests hold the worker's SOQL and writes to the same
files, so the org, the emulator and the code cannot drift apart.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import cache
from pathlib import Path

NAMESPACE = "http://soap.sforce.com/2006/04/metadata"
_NS = {"md": NAMESPACE}
# A wheel carries the objects inside the package (pyproject's force-include); a checkout or an
# editable install reads them where the admin deploys them from.
_PACKAGED = Path(__file__).resolve().parent / "objects"
_CHECKOUT = Path(__file__).resolve().parents[2] / "salesforce" / "force-app" / "main" / "default"


class MetadataError(Exception):
    """A metadata file is missing, unreadable or lacks an element the emulator needs."""


@dataclass(frozen=True)
class CustomField:
    """One `<Object>/fields/<Name>.field-meta.xml`: the parts an API client can observe."""

    sobject: str
    name: str
    type: str  # the Metadata API's FieldType: Text, Picklist, Number, LongTextArea, Checkbox...
    label: str
    length: int = 0
    precision: int = 0
    scale: int = 0
    required: bool = False
    values: tuple[str, ...] = ()  # picklist API names (fullName), in their order
    restricted: bool = False


@dataclass(frozen=True)
class PlatformEvent:
    name: str
    event_type: str  # HighVolume
    publish_behavior: str  # PublishAfterCommit or PublishImmediately


def objects_dir() -> Path:
    """The `objects/` folder of the DX source this code runs with."""
    return _PACKAGED if _PACKAGED.is_dir() else _CHECKOUT / "objects"


@cache
def custom_fields(objects: Path | None = None) -> dict[str, tuple[CustomField, ...]]:
    """Every custom field of the source, by object name, each object's fields sorted by name."""
    objects = objects or objects_dir()
    if not objects.is_dir():
        raise MetadataError(f"no Salesforce metadata at {objects}")
    found: dict[str, tuple[CustomField, ...]] = {}
    for folder in sorted(p for p in objects.iterdir() if p.is_dir()):
        files = sorted((folder / "fields").glob("*.field-meta.xml"))
        found[folder.name] = tuple(read_field(folder.name, f) for f in files)
    return found


def platform_event(name: str, objects: Path | None = None) -> PlatformEvent:
    path = (objects or objects_dir()) / name / f"{name}.object-meta.xml"
    root = _root(path, "CustomObject")
    return PlatformEvent(name, _text(root, "eventType", path), _text(root, "publishBehavior", path))


def read_field(sobject: str, path: Path) -> CustomField:
    root = _root(path, "CustomField")
    name = _text(root, "fullName", path)
    if f"{name}.field-meta.xml" != path.name:
        raise MetadataError(f"{path}: fullName {name} does not match the file name")
    values = root.findall("md:valueSet/md:valueSetDefinition/md:value/md:fullName", _NS)
    return CustomField(
        sobject=sobject,
        name=name,
        type=_text(root, "type", path),
        label=_text(root, "label", path),
        length=_int(root, "length"),
        precision=_int(root, "precision"),
        scale=_int(root, "scale"),
        required=root.findtext("md:required", "false", _NS) == "true",
        values=tuple((v.text or "").strip() for v in values),
        restricted=root.findtext("md:valueSet/md:restricted", "false", _NS) == "true",
    )


def _root(path: Path, kind: str) -> ET.Element:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise MetadataError(f"{path}: {exc}") from exc
    if root.tag != f"{{{NAMESPACE}}}{kind}":
        raise MetadataError(f"{path}: root element is {root.tag}, not {kind}")
    return root


def _text(root: ET.Element, tag: str, path: Path) -> str:
    value = (root.findtext(f"md:{tag}", "", _NS) or "").strip()
    if not value:
        raise MetadataError(f"{path}: no <{tag}>")
    return value


def _int(root: ET.Element, tag: str) -> int:
    return int(root.findtext(f"md:{tag}", "0", _NS) or 0)
