"""How the WHMCS emulator's replies look on the wire: JSON as Laminas writes it, NVP, XML, and
the pages a web server, proxy or PHP itself puts in front of them when something goes wrong.
"""

from __future__ import annotations

import json
import re
from typing import Any
from xml.sax.saxutils import escape

JSON_TYPE = "application/json"
HTML_TYPE = "text/html; charset=UTF-8"
# Laminas JsonResponse's default flags: JSON_HEX_TAG|HEX_APOS|HEX_AMP|HEX_QUOT, slashes unescaped.
_HEX = {'\\"': "\\u0022", "<": "\\u003C", ">": "\\u003E", "&": "\\u0026", "'": "\\u0027"}
_HEXABLE = re.compile(r"\\.|[<>&']")
REASONS = {
    400: "Bad Request",
    401: "Authorization Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Not Allowed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}


def json_body(payload: Any, hex_flags: bool = True) -> bytes:
    text = json.dumps(payload, separators=(",", ":"))
    if hex_flags:
        # Escapes are consumed in pairs, so an escaped backslash before a quote stays intact.
        text = _HEXABLE.sub(lambda m: _HEX.get(m.group(0), m.group(0)), text)
    return text.encode()


def nvp_body(payload: dict[str, Any]) -> bytes:
    """The deprecated `key=value;` format WHMCS falls back to without `responsetype`."""
    flat = (f"{k}={_scalar(v)}" for k, v in payload.items() if not isinstance(v, dict | list))
    return ";".join(flat).encode()


def xml_body(payload: dict[str, Any], action: str) -> bytes:
    inner = "".join(_xml(str(k), v) for k, v in payload.items())
    text = (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<whmcsapi version="8.7.2"><action>{escape(action)}</action>{inner}</whmcsapi>'
    )
    return text.encode()


def numbers_as_strings(value: Any) -> Any:
    """Every integer as a numeric string, as some WHMCS versions and drivers send them."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return {k: numbers_as_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [numbers_as_strings(v) for v in value]
    return value


def _scalar(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _xml(name: str, value: Any) -> str:
    if isinstance(value, list):
        return "".join(_xml(name, v) for v in value)
    if isinstance(value, dict):
        return f"<{name}>" + "".join(_xml(str(k), v) for k, v in value.items()) + f"</{name}>"
    return f"<{name}>{escape(_scalar(value))}</{name}>"


# --- what stands in front of PHP ---


def server_page(status: int) -> bytes:
    """An nginx error page, as a proxy in front of PHP-FPM answers."""
    title = f"{status} {REASONS.get(status, 'Error')}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    ).encode()


def waf_page() -> bytes:
    """A web application firewall's block page (ModSecurity/Cloudflare style)."""
    return (
        b"<!DOCTYPE html><html><head><title>Attention Required! | Access denied</title></head>"
        b"<body><h1>Sorry, you have been blocked</h1><p>This request was blocked by the security "
        b"rules of the site.</p><p>Ray ID: 8a1b2c3d4e5f6789</p></body></html>"
    )


def maintenance_page() -> bytes:
    return (
        b"<!DOCTYPE html><html><head><title>Down for Maintenance</title></head><body>"
        b"<h1>Down for Maintenance</h1><p>An upgrade is currently in progress. "
        b"Please come back soon.</p></body></html>"
    )


def php_warning(action: str) -> bytes:
    """What PHP prints before the reply when display_errors is on."""
    return (
        '<br />\n<b>Warning</b>:  Undefined array key "domain" in '
        f"<b>/var/www/whmcs/includes/api/{action}.php</b> on line <b>87</b><br />\n"
        "<br />\n<b>Deprecated</b>:  strlen(): Passing null to parameter #1 ($string) of type "
        "string is deprecated in <b>/var/www/whmcs/vendor/whmcs/whmcs-foundation/lib/Order/"
        "OrderFunctions.php</b> on line <b>412</b><br />\n"
    ).encode()
