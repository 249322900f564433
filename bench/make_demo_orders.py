"""Generate the demo order store ``config/orders.json`` for the fictional shop "Northwind Goods".

Same format as the tau-bench retail ``orders.json`` (order_id -> order; see :mod:`state.orders`) so one
loader reads both, plus an ``email`` field in each order (the demo ships no users file). Every name,
address, email (``@example.com``) and tracking number is made up. A fixed seed makes the output
byte-for-byte reproducible; ``--check`` exits 1 when the committed file differs from what this script
would write.

Usage: ``.venv/bin/python bench/make_demo_orders.py [--out config/orders.json] [--check]``
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

SEED = 20240611
N_ORDERS = 200
N_CUSTOMERS = 60
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "config" / "orders.json"

# status -> share of orders (sums to 1)
STATUS_MIX = {
    "pending": 0.25,
    "processed": 0.20,
    "delivered": 0.35,
    "cancelled": 0.10,
    "return requested": 0.10,
}

# name -> (price range, option name -> choices)
CATALOG: dict[str, tuple[tuple[float, float], dict[str, list[str]]]] = {
    "Stoneware Mug": ((12, 28), {"color": ["sage", "slate", "cream"], "capacity": ["300ml", "450ml"]}),
    "Wool Throw Blanket": ((59, 119), {"color": ["oat", "charcoal", "rust"], "size": ["130x170cm", "150x200cm"]}),
    "Desk Lamp": ((34, 89), {"finish": ["brass", "matte black", "white"], "bulb": ["LED", "E27"]}),
    "Trail Running Shoes": ((79, 149), {"size": ["38", "39", "40", "41", "42", "43", "44"], "color": ["blue", "grey", "orange"]}),
    "Cast Iron Skillet": ((29, 69), {"diameter": ["20cm", "26cm", "30cm"], "pre-seasoned": ["yes", "no"]}),
    "Canvas Backpack": ((45, 99), {"capacity": ["18L", "24L", "30L"], "color": ["olive", "navy", "sand"], "waterproof": ["yes", "no"]}),
    "Bluetooth Speaker": ((39, 129), {"color": ["black", "red", "teal"], "battery": ["10h", "20h"]}),
    "Loose Leaf Tea Sampler": ((18, 32), {"blend": ["green", "black", "herbal"], "tins": ["4", "8"]}),
    "Yoga Mat": ((25, 75), {"thickness": ["4mm", "6mm"], "color": ["plum", "moss", "stone"]}),
    "Linen Notebook Set": ((14, 26), {"ruling": ["dotted", "lined", "blank"], "pack": ["3", "5"]}),
    "Chef's Knife": ((49, 139), {"blade": ["18cm", "21cm"], "handle": ["walnut", "olive wood", "black"]}),
    "Rain Jacket": ((69, 179), {"size": ["S", "M", "L", "XL"], "color": ["yellow", "navy", "forest"], "hood": ["yes", "no"]}),
    "Pour-over Coffee Set": ((32, 64), {"material": ["glass", "ceramic"], "filters": ["paper", "metal"]}),
    "Houseplant Pot": ((16, 48), {"diameter": ["12cm", "17cm", "24cm"], "glaze": ["speckled", "matte white", "terracotta"]}),
    "Wireless Earbuds": ((59, 149), {"color": ["white", "black"], "noise cancelling": ["yes", "no"]}),
}

FIRST = ["Maya", "Oskar", "Priya", "Lucas", "Amara", "Tomas", "Ingrid", "Kenji", "Sofia", "Felix",
         "Nadia", "Emil", "Grace", "Mateo", "Leila", "Hugo", "Zara", "Ravi", "Clara", "Jonas"]
LAST = ["Lindqvist", "Okafor", "Moreau", "Tanaka", "Castillo", "Novak", "Brennan", "Haddad", "Weber",
        "Sato", "Kowalski", "Fischer", "Mendes", "Ibsen", "Rahman", "Duarte"]
STREETS = ["Harbor Lane", "Maple Avenue", "Quarry Road", "Elm Street", "Orchard Way", "Mill Road",
           "Lakeview Drive", "Station Street"]
CITIES = [("Portland", "OR", "97"), ("Madison", "WI", "53"), ("Asheville", "NC", "28"),
          ("Boulder", "CO", "80"), ("Burlington", "VT", "05"), ("Santa Fe", "NM", "87")]


def _digits(rng: random.Random, n: int) -> str:
    return str(rng.randint(10 ** (n - 1), 10**n - 1))


def _variants(rng: random.Random) -> dict[str, tuple[str, list[tuple[str, float, dict[str, str]]]]]:
    """name -> (product_id, [(item_id, price, options)]): four variants per product."""
    products: dict[str, tuple[str, list[tuple[str, float, dict[str, str]]]]] = {}
    for name, ((low, high), options) in CATALOG.items():
        variants: list[tuple[str, float, dict[str, str]]] = []
        seen: set[tuple[str, ...]] = set()
        while len(variants) < 4:
            chosen = {k: rng.choice(v) for k, v in options.items()}
            key = tuple(chosen.values())
            if key in seen:
                continue
            seen.add(key)
            variants.append((_digits(rng, 10), round(rng.uniform(low, high), 2), chosen))
        products[name] = (_digits(rng, 10), variants)
    return products


def _customers(rng: random.Random) -> list[dict[str, Any]]:
    people: list[dict[str, Any]] = []
    used: set[str] = set()
    while len(people) < N_CUSTOMERS:
        first, last = rng.choice(FIRST), rng.choice(LAST)
        suffix = _digits(rng, 4)
        user_id = f"{first.lower()}_{last.lower()}_{suffix}"
        email = f"{first.lower()}.{last.lower()}{suffix[:2]}@example.com"
        if user_id in used or email in used:
            continue
        used.update((user_id, email))
        city, state, zip_prefix = rng.choice(CITIES)
        methods = [f"credit_card_{_digits(rng, 7)}"]
        if rng.random() < 0.5:
            methods.append(f"paypal_{_digits(rng, 7)}")
        if rng.random() < 0.3:
            methods.append(f"gift_card_{_digits(rng, 7)}")
        people.append(
            {
                "user_id": user_id,
                "email": email,
                "address": {
                    "address1": f"{rng.randint(1, 999)} {rng.choice(STREETS)}",
                    "address2": "",
                    "city": city,
                    "country": "USA",
                    "state": state,
                    "zip": zip_prefix + _digits(rng, 3),
                },
                "methods": methods,
            }
        )
    return people


def build(seed: int = SEED) -> dict[str, dict[str, Any]]:
    """The demo orders, order_id -> tau-bench order record (+ ``email``). Deterministic in ``seed``."""
    rng = random.Random(seed)
    products = _variants(rng)
    customers = _customers(rng)
    statuses = [s for s, share in STATUS_MIX.items() for _ in range(round(share * N_ORDERS))]
    rng.shuffle(statuses)
    orders: dict[str, dict[str, Any]] = {}
    for status in statuses:
        order_id = f"#W{_digits(rng, 7)}"
        while order_id in orders:
            order_id = f"#W{_digits(rng, 7)}"
        # A few customers order often, so "the user's other orders" exist to be kept out of replies.
        who = customers[rng.randrange(8) if rng.random() < 0.3 else rng.randrange(N_CUSTOMERS)]
        items: list[dict[str, Any]] = []
        for name in rng.sample(sorted(products), rng.choice([1, 1, 2, 2, 3, 4])):
            product_id, variants = products[name]
            item_id, price, options = rng.choice(variants)
            items.append({"name": name, "product_id": product_id, "item_id": item_id, "price": price,
                          "options": dict(options)})
        total = round(sum(i["price"] for i in items), 2)
        method = rng.choice(who["methods"])
        fulfillments = []
        if status in ("processed", "delivered", "return requested"):
            ids = [i["item_id"] for i in items]
            if len(ids) > 1 and rng.random() < 0.25:  # shipped in two parcels
                cut = rng.randint(1, len(ids) - 1)
                fulfillments = [{"tracking_id": [_digits(rng, 12)], "item_ids": ids[:cut]},
                                {"tracking_id": [_digits(rng, 12)], "item_ids": ids[cut:]}]
            else:
                fulfillments = [{"tracking_id": [_digits(rng, 12)], "item_ids": ids}]
        payments = [{"transaction_type": "payment", "amount": total, "payment_method_id": method}]
        if status == "cancelled":
            payments.append({"transaction_type": "refund", "amount": total, "payment_method_id": method})
        elif status == "delivered" and len(items) > 1 and rng.random() < 0.2:
            # An item returned earlier: a partial refund on a delivered order.
            payments.append({"transaction_type": "refund", "amount": items[-1]["price"],
                             "payment_method_id": method})
        orders[order_id] = {
            "order_id": order_id,
            "user_id": who["user_id"],
            "email": who["email"],
            "address": who["address"],
            "items": items,
            "fulfillments": fulfillments,
            "status": status,
            "payment_history": payments,
        }
    return orders


def render(orders: dict[str, dict[str, Any]]) -> str:
    """One order per line: small, and a diff shows which orders changed."""
    lines = [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in orders.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="exit 1 if --out differs; write nothing")
    args = parser.parse_args(argv)
    text = render(build())
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date; run bench/make_demo_orders.py", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {len(build())} orders to {args.out} ({len(text.encode()):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
