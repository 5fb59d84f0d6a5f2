"""The WHMCS emulator's data (clients, pay methods, products, orders) and the API actions on it.

Actions take the request's PHP array and return the reply payload, or raise ActionError for a
`result=error` reply (HTTP 200, as WHMCS answers every action-level failure). The silent
behaviours of WHMCS 8.7 are kept, because they are what a client must guard against: AddOrder
drops unknown product ids and substitutes an unpriced or misspelt billing cycle without an error
(both recorded in `substitutions`), AcceptOrder accepts only Pending orders, GetOrders omits
`orders` when nothing matches.

Fixture-only product keys: `allowqty` (0: WHMCS ignores `qty`; 1, the default here: one service
per unit; 2: one service carrying the quantity), `setup_error` (AcceptOrder with autosetup fails
on that product's services with this message) and `autosetup` (what the product does when
AcceptOrder is sent no optional parameter).
"""

from __future__ import annotations

import copy
import ipaddress
import itertools
import random
import re
import time
from collections.abc import Callable
from typing import Any

from sandbox.whmcs.phpform import PhpArray, as_list, truthy

CYCLES = ("monthly", "quarterly", "semiannually", "annually", "biennially", "triennially")
# How WHMCS stores (and GetOrders shows) a cycle: Monthly, Semi-Annually, One Time...
STORED_CYCLE = {c: c.capitalize() for c in CYCLES} | {"semiannually": "Semi-Annually"}
STORED_CYCLE |= {"onetime": "One Time", "free": "Free Account"}
SETUP_FEE = {c: f"{c[0]}setupfee" for c in CYCLES} | {"onetime": "msetupfee"}
PRODUCT_TYPES = {
    "hostingaccount": "Shared Hosting",
    "reselleraccount": "Reseller Hosting",
    "server": "Dedicated/VPS Server",
    "other": "Other Product/Service",
}
CURRENCY_SIGNS = {"USD": "$", "EUR": "€", "GBP": "£"}
ACCEPT_OPTIONS = (
    "serverid",
    "serviceusername",
    "servicepassword",
    "registrar",
    "sendregistrar",
    "autosetup",
    "sendemail",
)
NOT_PENDING = "Order ID not found or Status not Pending"
ORDER_STATUSES = ("Pending", "Active", "Fraud", "Cancelled")
_PHP_INT = re.compile(r"\s*([+-]?\d+)")


class ActionError(Exception):
    """A `{"result": "error", "message": ...}` reply."""


def php_int(value: Any) -> int:
    """PHP's (int) cast of a request value: leading digits, else 0."""
    if isinstance(value, dict):
        return 1 if value else 0
    match = _PHP_INT.match(str(value or ""))
    return int(match.group(1)) if match else 0


def _money(value: float) -> str:
    return f"{value:.2f}"


def _priced(price: Any) -> bool:
    try:
        return float(price) >= 0
    except (TypeError, ValueError):
        return False


def _amount(price: Any) -> float:
    return float(price) if _priced(price) else 0.0


def _indexed(value: Any, index: Any) -> Any:
    """PHP's `$value[$index]`, including indexing into a string (`"annually"[0]` is `"a"`)."""
    if isinstance(value, dict):
        return value.get(index)
    if isinstance(value, str) and isinstance(index, int) and -len(value) <= index < len(value):
        return value[index]
    return None


class Billing:
    """Every piece of WHMCS state the emulator keeps; callers hold the emulator's lock."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.gateways: list[dict[str, str]] = []
        self.clients: dict[int, dict[str, Any]] = {}
        self.paymethods: dict[int, list[dict[str, Any]]] = {}
        self.products: dict[int, dict[str, Any]] = {}
        self.orders: dict[int, dict[str, Any]] = {}
        self.invoices: dict[int, dict[str, Any]] = {}
        self.substitutions: list[dict[str, Any]] = []
        # Separate id ranges make an order id passed where a service id belongs stand out.
        self._order_ids = itertools.count(1001)
        self._service_ids = itertools.count(50001)
        self._invoice_ids = itertools.count(80001)
        self._paymethod_ids = itertools.count(1)
        self._random = random.Random()

    # --- fixtures and admin ---

    def load(self, fixtures: dict[str, Any]) -> dict[str, int]:
        for gateway in fixtures.get("gateways", []):
            self.gateways = [g for g in self.gateways if g["module"] != gateway["module"]]
            self.gateways.append({k: gateway[k] for k in ("module", "displayname")})
        for client in fixtures.get("clients", []):
            self.set_client(client)
        for product in fixtures.get("products", []):
            self.set_product(product)
        return {
            "gateways": len(self.gateways),
            "clients": len(self.clients),
            "products": len(self.products),
        }

    def set_client(self, fields: dict[str, Any]) -> dict[str, Any]:
        fields = dict(fields)
        client_id = int(fields.pop("id", 0) or max(self.clients, default=0) + 1)
        methods = fields.pop("paymethods", None)
        client = self.clients.get(client_id) or {
            "firstname": "Test",
            "lastname": "Client",
            "email": f"client{client_id}@example.com",
            "companyname": "",
            "status": "Active",
            "defaultgateway": "",
            "currency_code": "USD",
            "countrycode": "US",
            "groupid": 0,
            "credit": "0.00",
        }
        client.update(fields)
        client["id"] = client_id
        self.clients[client_id] = client
        if methods is not None or client_id not in self.paymethods:
            self.paymethods[client_id] = [self._paymethod(client_id, m) for m in methods or []]
        return {"client": self._client_view(client), "paymethods": self.paymethods[client_id]}

    def set_product(self, fields: dict[str, Any]) -> None:
        pid = int(fields["pid"])
        pricing = {}
        for currency, prices in fields.get("pricing", {}).items():
            row = {"prefix": CURRENCY_SIGNS.get(currency, ""), "suffix": f" {currency}"}
            row |= {fee: "0.00" for fee in dict.fromkeys(SETUP_FEE.values())}
            row |= {cycle: "-1.00" for cycle in CYCLES}
            pricing[currency] = row | {k: str(v) for k, v in prices.items()}
        self.products[pid] = {
            "gid": 1,
            "type": "other",
            "description": "",
            "module": "",
            "paytype": "recurring",
            "allowqty": 1,
            "autosetup": "",
            "setup_error": "",
            **fields,
            "pid": pid,
            "pricing": pricing,
        }

    def set_order_status(self, order_id: int, status: str) -> dict[str, Any]:
        order = self.orders[order_id]
        order["status"] = status
        return copy.deepcopy(order)

    def order_records(self) -> list[dict[str, Any]]:
        return copy.deepcopy([self.orders[k] for k in sorted(self.orders)])

    # --- read actions ---

    def get_pay_methods(self, p: PhpArray, ip: str) -> dict[str, Any]:
        if not truthy(p.get("clientid")):
            raise ActionError("Client ID Is Required")
        client_id = php_int(p["clientid"])
        if client_id not in self.clients:
            raise ActionError("Client Not Found")
        methods = self.paymethods.get(client_id, [])
        wanted = str(p.get("type") or "").lower()
        if wanted:
            if wanted not in ("creditcard", "bankaccount"):
                raise ActionError(
                    "Invalid Pay Method Type. Should be 'BankAccount' or 'CreditCard'"
                )
            family = "Card" if wanted == "creditcard" else "Bank"
            methods = [m for m in methods if family in m["type"]]
        if truthy(p.get("paymethodid")):
            methods = [m for m in methods if m["id"] == php_int(p["paymethodid"])]
        # clientid is echoed exactly as it was sent: a string.
        return {
            "result": "success",
            "clientid": p["clientid"],
            "paymethods": copy.deepcopy(methods),
        }

    def get_payment_methods(self, p: PhpArray, ip: str) -> dict[str, Any]:
        gateways = copy.deepcopy(self.gateways)
        return _listing(len(gateways), "paymentmethods", "paymentmethod", gateways)

    def get_clients_details(self, p: PhpArray, ip: str) -> dict[str, Any]:
        if truthy(p.get("clientid")):
            client = self.clients.get(php_int(p["clientid"]))
        elif truthy(p.get("email")):
            email = str(p["email"]).lower()
            client = next((c for c in self.clients.values() if c["email"].lower() == email), None)
        else:
            raise ActionError("Either clientid Or email Is Required")
        if client is None:
            raise ActionError("Client Not Found")
        view = self._client_view(client)
        # The same fields also appear at the top level (deprecated, still sent by 8.x).
        flat = {k: v for k, v in view.items() if not isinstance(v, dict | list)}
        return {"result": "success", "client": view, **flat}

    def get_products(self, p: PhpArray, ip: str) -> dict[str, Any]:
        products = sorted(self.products.values(), key=lambda x: x["pid"])
        if truthy(p.get("pid")):
            raw = ",".join(str(v) for v in as_list(p["pid"]))
            wanted = {php_int(part) for part in raw.split(",")}
            products = [x for x in products if x["pid"] in wanted]
        if truthy(p.get("gid")):
            products = [x for x in products if x["gid"] == php_int(p["gid"])]
        if truthy(p.get("module")):
            products = [x for x in products if x["module"] == p["module"]]
        views = [self._product_view(x) for x in products]
        return _listing(len(views), "products", "product", views)

    def get_orders(self, p: PhpArray, ip: str) -> dict[str, Any]:
        rows = sorted(self.orders.values(), key=lambda o: o["id"], reverse=True)
        for param, field in (("id", "id"), ("userid", "userid"), ("requestor_id", "requestor_id")):
            if truthy(p.get(param)):
                rows = [o for o in rows if o[field] == php_int(p[param])]
        if truthy(p.get("status")):
            rows = [o for o in rows if o["status"] == p["status"]]
        start = max(php_int(p.get("limitstart")), 0)
        count = php_int(p["limitnum"]) if truthy(p.get("limitnum")) else 25
        page = [self._order_view(o) for o in rows[start : start + max(count, 0)]]
        return _listing(
            len(rows), "orders", "order", page, startnumber=start, numreturned=len(page)
        )

    def get_order_statuses(self, p: PhpArray, ip: str) -> dict[str, Any]:
        counts = [
            {"title": s, "count": sum(o["status"] == s for o in self.orders.values())}
            for s in ORDER_STATUSES
        ]
        return _listing(len(counts), "statuses", "status", counts)

    # --- write actions ---

    def add_order(self, p: PhpArray, ip: str) -> dict[str, Any]:
        client = self.clients.get(php_int(p.get("clientid")))
        if client is None:
            raise ActionError("Client ID Not Found")
        if client["status"] == "Closed":
            raise ActionError("Unable to add order when client status is Closed")
        modules = [g["module"] for g in self.gateways]
        if p.get("paymentmethod") not in modules:
            raise ActionError("Invalid Payment Method. Valid options include " + ",".join(modules))
        if truthy(p.get("clientip")) and not _is_ip(p["clientip"]):
            raise ActionError("Invalid IP address provided for 'clientip'")
        lines, notes = self._cart(p, client["currency_code"])
        order = self._create_order(p, client, lines, ip)
        for note in notes:
            note["order_id"] = order["id"]
        reply: dict[str, Any] = {"result": "success", "orderid": order["id"]}
        service_ids = ",".join(str(s["id"]) for s in order["services"])
        reply |= {"productids": service_ids, "serviceids": service_ids}
        reply |= {"addonids": "", "domainids": ""}
        if not truthy(p.get("noinvoice")):
            reply["invoiceid"] = order["invoiceid"]
        return reply

    def accept_order(self, p: PhpArray, ip: str) -> dict[str, Any]:
        order = self._order(p, pending=True)
        # Any optional parameter means the product's own auto-setup setting is ignored.
        explicit = any(name in p for name in ACCEPT_OPTIONS)
        autosetup = truthy(p.get("autosetup")) if explicit else None
        sendemail = truthy(p.get("sendemail")) if explicit else None
        order["accept_calls"].append(
            {"autosetup": autosetup, "sendemail": sendemail, "explicit": explicit}
        )
        failures = []
        for service in order["services"]:
            if service["status"] != "Pending":
                continue  # a repeat accept only processes what is still pending
            product = self.products.get(service["pid"], {})
            run = autosetup if explicit else truthy(product.get("autosetup"))
            if run and product.get("setup_error"):
                failures.append(str(product["setup_error"]))
                continue
            service["status"] = "Active"
            service["provisioned"] = bool(run)
            if sendemail or not explicit:
                order["emails"].append(f"Welcome Email (service {service['id']})")
        if failures:
            raise ActionError(", ".join(failures))
        order["status"] = "Active"
        return {"result": "success"}

    def cancel_order(self, p: PhpArray, ip: str) -> dict[str, Any]:
        order = self._order(p, pending=True)
        self._set_status(order, "Cancelled")
        if order["invoiceid"] in self.invoices:
            self.invoices[order["invoiceid"]]["status"] = "Cancelled"
        return {"result": "success"}

    def pending_order(self, p: PhpArray, ip: str) -> dict[str, Any]:
        order = self._order(p)
        self._set_status(order, "Pending")
        return {"result": "success", "orderid": order["id"]}

    def delete_order(self, p: PhpArray, ip: str) -> dict[str, Any]:
        order = self._order(p)
        if order["status"] not in ("Cancelled", "Fraud"):
            raise ActionError("The order status must be in Cancelled or Fraud to be deleted")
        del self.orders[order["id"]]
        return {"result": "success"}

    def _order(self, p: PhpArray, *, pending: bool = False) -> dict[str, Any]:
        """The order `orderid` names, else WHMCS's error (actions on Pending orders only name
        the status in it)."""
        order = self.orders.get(php_int(p.get("orderid")))
        if order is None or (pending and order["status"] != "Pending"):
            raise ActionError(NOT_PENDING if pending else "Order ID not found")
        return order

    # --- AddOrder internals ---

    def _cart(self, p: PhpArray, currency: str) -> tuple[list[dict[str, Any]], list[dict]]:
        """The cart's lines, after WHMCS's silent drops and substitutions (also returned)."""
        pids, cycles, qtys, domains = (p.get(k) for k in ("pid", "billingcycle", "qty", "domain"))
        if not truthy(pids):
            raise ActionError("No items added to cart so order cannot proceed")
        if not isinstance(pids, dict):
            # A scalar pid is one product; its companions are read as index 0.
            pids, cycles, qtys, domains = ({0: v} for v in (pids, cycles, qtys, domains))
        notes, lines = [], []
        for index, raw_pid in pids.items():
            product = self._product_for(raw_pid)
            if product is None:
                notes.append(self._note("dropped_pid", index, raw_pid, raw_pid, None))
                continue
            requested = _indexed(cycles, index)
            cycle = self._cycle(product, requested, currency)
            if cycle != (requested.lower() if isinstance(requested, str) else requested):
                notes.append(self._note("billing_cycle", index, product["pid"], requested, cycle))
            qty = max(php_int(_indexed(qtys, index)), 1)
            if qty > 1 and not product["allowqty"]:
                notes.append(self._note("qty_ignored", index, product["pid"], qty, 1))
                qty = 1
            domain = _indexed(domains, index)
            lines.append(
                {"product": product, "cycle": cycle, "qty": qty, "domain": str(domain or "")}
            )
        self.substitutions.extend(notes)
        return lines, notes

    def _note(self, kind: str, index: Any, pid: Any, requested: Any, used: Any) -> dict[str, Any]:
        return {
            "kind": kind,
            "index": index,
            "pid": pid,
            "requested": requested,
            "used": used,
            "at": self.clock(),
        }

    def _product_for(self, raw: Any) -> dict[str, Any] | None:
        if not isinstance(raw, str) or not raw.strip().isdigit():
            return None  # "7,9" or an array is one bogus id, not a list
        return self.products.get(int(raw))

    @staticmethod
    def _cycle(product: dict[str, Any], requested: Any, currency: str) -> str:
        """The cycle WHMCS really uses: the requested one if priced, else the first priced one."""
        if product["paytype"] in ("free", "onetime"):
            return product["paytype"]
        prices = product["pricing"].get(currency, {})
        wanted = requested.lower() if isinstance(requested, str) else ""
        if wanted in CYCLES and _priced(prices.get(wanted)):
            return wanted
        return next((c for c in CYCLES if _priced(prices.get(c))), "monthly")

    def _create_order(
        self, p: PhpArray, client: dict[str, Any], lines: list[dict[str, Any]], ip: str
    ) -> dict[str, Any]:
        order_id = next(self._order_ids)
        services, total = [], 0.0
        for line in lines:
            price, setup = self._price(line["product"], line["cycle"], client["currency_code"])
            units = 1 if line["product"]["allowqty"] == 2 else line["qty"]
            for _ in range(units):
                per_service_qty = line["qty"] if units == 1 else 1
                services.append(self._service(line, price * per_service_qty))
                total += (price + setup) * per_service_qty
        invoice_id = 0 if truthy(p.get("noinvoice")) or total <= 0 else next(self._invoice_ids)
        if invoice_id:
            self.invoices[invoice_id] = {
                "id": invoice_id,
                "order_id": order_id,
                "status": "Unpaid",
                "total": _money(total),
            }
        emails = [] if truthy(p.get("noemail")) else ["Order Confirmation"]
        if invoice_id and not truthy(p.get("noinvoiceemail")):
            emails.append("Invoice Created")
        order = {
            "id": order_id,
            "ordernum": self._random.randint(10**9, 10**10 - 1),
            "userid": client["id"],
            "contactid": 0,
            "requestor_id": 1,
            "admin_requestor_id": 0,
            "date": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.clock())),
            "status": "Pending",
            "paymentmethod": p["paymentmethod"],
            "invoiceid": invoice_id,
            "amount": _money(total),
            "notes": p.get("notes") if isinstance(p.get("notes"), str) else "",
            "promocode": p.get("promocode") if isinstance(p.get("promocode"), str) else "",
            "ipaddress": p["clientip"] if truthy(p.get("clientip")) else ip,
            "services": services,
            "emails": emails,
            "accept_calls": [],
        }
        self.orders[order_id] = order
        return order

    @staticmethod
    def _price(product: dict[str, Any], cycle: str, currency: str) -> tuple[float, float]:
        if cycle == "free":
            return 0.0, 0.0
        prices = product["pricing"].get(currency, {})
        column = "monthly" if cycle == "onetime" else cycle
        return _amount(prices.get(column)), _amount(prices.get(SETUP_FEE[cycle]))

    def _service(self, line: dict[str, Any], amount: float) -> dict[str, Any]:
        return {
            "id": next(self._service_ids),
            "pid": line["product"]["pid"],
            "billingcycle": STORED_CYCLE[line["cycle"]],
            "qty": line["qty"] if line["product"]["allowqty"] == 2 else 1,
            "domain": line["domain"],
            "amount": _money(amount),
            "status": "Pending",
        }

    @staticmethod
    def _set_status(order: dict[str, Any], status: str) -> None:
        order["status"] = status
        for service in order["services"]:
            service["status"] = status

    # --- views (the shapes WHMCS sends) ---

    def _paymethod(self, client_id: int, raw: dict[str, Any]) -> dict[str, Any]:
        kind = raw.get("type", "RemoteCreditCard")
        method: dict[str, Any] = {
            "id": int(raw.get("id") or next(self._paymethod_ids)),
            "type": kind,
            "description": raw.get("description", ""),
            "gateway_name": raw.get("gateway_name", ""),
            "contact_type": "Client",
            "contact_id": client_id,
        }
        if "Card" in kind:
            for field, default in (("card_last_four", "4242"), ("expiry_date", "12/30")):
                method[field] = raw.get(field, default)
            method |= {
                "start_date": "",
                "issue_number": "",
                "card_type": raw.get("card_type", "Visa"),
            }
        else:
            method["bank_name"] = raw.get("bank_name", "")
        method["remote_token"] = raw.get("remote_token", "")
        method["last_updated"] = raw.get("last_updated", "17/05/2019 10:01")
        return method

    def _client_view(self, client: dict[str, Any]) -> dict[str, Any]:
        view = dict(client)
        view |= {"client_id": client["id"], "userid": client["id"]}
        view["fullname"] = f"{client['firstname']} {client['lastname']}".strip()
        view["uuid"] = f"00000000-0000-4000-8000-{client['id']:012d}"
        view["currency"] = 1
        view["customfields"] = []
        user = {"id": client["id"], "name": view["fullname"], "email": client["email"]}
        view["users"] = {"user": [user | {"is_owner": True}]}
        return copy.deepcopy(view)

    def _product_view(self, product: dict[str, Any]) -> dict[str, Any]:
        view = {k: v for k, v in product.items() if k not in ("autosetup", "setup_error")}
        slug = re.sub(r"[^a-z0-9]+", "-", str(product.get("name", "")).lower()).strip("-")
        view |= {"slug": slug, "product_url": f"https://billing.example.com/store/{slug}"}
        view |= {"quantity_available": 0, "customfields": {"customfield": []}}
        view["configoptions"] = {"configoption": []}
        return copy.deepcopy(view)

    def _order_view(self, order: dict[str, Any]) -> dict[str, Any]:
        client = self.clients.get(order["userid"], {})
        currency = client.get("currency_code", "USD")
        gateway = next((g for g in self.gateways if g["module"] == order["paymentmethod"]), {})
        invoice = self.invoices.get(order["invoiceid"])
        skip = ("services", "emails", "accept_calls")
        view = {k: v for k, v in order.items() if k not in skip}
        view |= {"nameservers": "", "transfersecret": "", "renewals": "", "orderdata": "[]"}
        view |= {"paymentmethodname": gateway.get("displayname", order["paymentmethod"])}
        view["paymentstatus"] = invoice["status"] if invoice else None
        view["name"] = f"{client.get('firstname', '')} {client.get('lastname', '')}".strip()
        view["currencyprefix"] = CURRENCY_SIGNS.get(currency, "")
        view["currencysuffix"] = f" {currency}"
        items = [self._line_item(s) for s in order["services"]]
        view["lineitems"] = {"lineitem": items} if items else []
        return copy.deepcopy(view)

    def _line_item(self, service: dict[str, Any]) -> dict[str, Any]:
        product = self.products.get(service["pid"], {})
        return {
            "type": "product",
            "relid": service["id"],
            "producttype": PRODUCT_TYPES.get(product.get("type", "other"), "Other"),
            "product": f"Group {product.get('gid', 1)} - {product.get('name', '')}",
            "domain": service["domain"],
            "billingcycle": service["billingcycle"],
            "amount": service["amount"],
            "status": service["status"],
        }


def _listing(total: int, plural: str, singular: str, rows: list, **counts: int) -> dict[str, Any]:
    """A list action's reply: `{plural: {singular: rows}}`, left out when there are no rows."""
    reply: dict[str, Any] = {"result": "success", "totalresults": total, **counts}
    if rows:
        reply[plural] = {singular: rows}
    return reply


def _is_ip(value: Any) -> bool:
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return False
    return True
