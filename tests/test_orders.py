"""The order store: the demo file, the tau-bench retail database, malformed files, id normalisation."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from config.settings import CONFIG_DIR, Settings
from state.orders import JsonOrderStore, Order, OrderStore, normalise_order_id

from shared_data import shared_data_dir  # tests/ is on sys.path (rootdir conftest)

ROOT = Path(__file__).resolve().parents[1]
DEMO = CONFIG_DIR / "orders.json"


@pytest.fixture(scope="module")
def demo() -> JsonOrderStore:
    return JsonOrderStore.from_files(DEMO)


@pytest.fixture(scope="module")
def tau() -> JsonOrderStore:
    retail = shared_data_dir() / "tau_bench_retail"
    return JsonOrderStore.from_files(retail / "orders.json", retail / "users.json")


# --- normalisation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("#W2611340", "#W2611340"),
        ("W2611340", "#W2611340"),
        ("w2611340", "#W2611340"),
        ("  #w2611340 ", "#W2611340"),
        ("# W2611340", "#W2611340"),
        ("W-2611340", "#W2611340"),
        ("12345", "#12345"),
        ("#12345", "#12345"),
        ("nw48213", "#NW48213"),
        ("123", None),
        ("W12", None),
        ("W2611340x", None),
        ("ABCD12345", None),
        ("hello", None),
        ("", None),
        ("1234567890123", None),
        ("#W 2611340 #W1", None),
    ],
)
def test_normalise_order_id(raw: str, expected: str | None) -> None:
    assert normalise_order_id(raw) == expected


def test_normalise_non_string_is_none() -> None:
    assert normalise_order_id(None) is None  # type: ignore[arg-type]
    assert normalise_order_id(2611340) is None  # type: ignore[arg-type]


# --- demo store --------------------------------------------------------------------------------


def test_settings_default_points_at_demo_store() -> None:
    assert Settings.model_fields["orders_file"].default == DEMO
    assert DEMO.stat().st_size < 300_000


async def test_demo_store_counts(demo: JsonOrderStore) -> None:
    assert isinstance(demo, OrderStore)
    assert await demo.count() == 200
    raw = json.loads(DEMO.read_text(encoding="utf-8"))
    statuses = Counter(o["status"] for o in raw.values())
    assert statuses == {
        "delivered": 70, "pending": 50, "processed": 40, "cancelled": 20, "return requested": 20,
    }
    refunds = sum(p["transaction_type"] == "refund" for o in raw.values() for p in o["payment_history"])
    assert refunds == 30


async def test_demo_known_order(demo: JsonOrderStore) -> None:
    order = await demo.get("w5976205")
    assert order is not None
    assert order.order_id == "#W5976205"
    assert order.user_id == "lucas_rahman_9742"
    assert order.email == "lucas.rahman97@example.com"
    assert order.status == "processed"
    assert [(i.name, i.item_id, i.price, dict(i.options)) for i in order.items] == [
        ("Stoneware Mug", "1780295393", 12.5, {"color": "cream", "capacity": "300ml"}),
        ("Wool Throw Blanket", "7077693177", 71.61, {"color": "oat", "size": "150x200cm"}),
    ]
    assert order.tracking_ids == ("612096739455", "523786092812")
    assert [f.item_ids for f in order.fulfillments] == [("1780295393",), ("7077693177",)]
    assert [(p.transaction_type, p.amount, p.payment_method_id) for p in order.payments] == [
        ("payment", 84.11, "credit_card_7921614")
    ]
    assert order.refunds == ()


async def test_demo_every_order_matches_file(demo: JsonOrderStore) -> None:
    raw = json.loads(DEMO.read_text(encoding="utf-8"))
    for order_id, record in raw.items():
        order = await demo.get(order_id)
        assert order is not None, order_id
        assert order.status == record["status"]
        assert order.email == record["email"]
        assert list(order.tracking_ids) == [t for f in record["fulfillments"] for t in f["tracking_id"]]
        shipped = record["status"] in ("processed", "delivered", "return requested")
        assert bool(order.tracking_ids) == shipped, order_id


async def test_demo_find_by_email(demo: JsonOrderStore) -> None:
    orders = await demo.find_by_email("Mateo.Moreau27@Example.com ")
    assert len(orders) == 15
    assert {o.user_id for o in orders} == {"mateo_moreau_2710"}
    assert orders[0].order_id == "#W1981191"
    assert await demo.find_by_email("nobody@example.com") == []


async def test_async_load_matches_from_files() -> None:
    store = await JsonOrderStore.load(DEMO)
    assert await store.count() == 200
    order = await store.get("#W3722796")
    assert order is not None and order.status == "delivered"
    assert [(r.amount, r.payment_method_id) for r in order.refunds] == [(121.74, "credit_card_2039081")]


async def test_get_unknown_and_garbage(demo: JsonOrderStore) -> None:
    assert await demo.get("#W0000000") is None
    assert await demo.get("not an id") is None
    assert await demo.get("") is None


def test_demo_file_is_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("make_demo_orders", ROOT / "bench" / "make_demo_orders.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render(module.build()) == DEMO.read_text(encoding="utf-8")


def test_order_is_frozen_and_hashable(demo: JsonOrderStore) -> None:
    order = next(iter(demo._orders.values()))
    assert isinstance(order, Order)
    hash(order)
    with pytest.raises(AttributeError):
        order.status = "delivered"  # type: ignore[misc]
    with pytest.raises(TypeError):
        order.items[0].options["color"] = "red"  # type: ignore[index]


# --- tau-bench retail --------------------------------------------------------------------------


async def test_tau_bench_counts(tau: JsonOrderStore) -> None:
    assert await tau.count() == 1000
    statuses: Counter[str] = Counter()
    for order in tau._orders.values():
        statuses[order.status] += 1
    assert statuses == {"pending": 423, "delivered": 373, "processed": 102, "cancelled": 102}


async def test_tau_bench_known_order(tau: JsonOrderStore) -> None:
    order = await tau.get("W2611340")
    assert order is not None
    assert order.order_id == "#W2611340"
    assert order.user_id == "james_li_5688"
    assert order.email == "james.li4495@example.com"  # from users.json
    assert order.status == "processed"
    assert [(i.name, i.item_id, i.price) for i in order.items] == [
        ("Water Bottle", "6469567736", 47.84),
        ("Office Chair", "8426249116", 488.81),
    ]
    assert dict(order.items[0].options) == {"capacity": "1000ml", "material": "glass", "color": "blue"}
    assert order.tracking_ids == ("357962501027",)
    assert order.fulfillments[0].item_ids == ("6469567736", "8426249116")
    assert [(p.transaction_type, p.amount, p.payment_method_id) for p in order.payments] == [
        ("payment", 536.65, "gift_card_1725971")
    ]


async def test_tau_bench_cancelled_order_has_refund(tau: JsonOrderStore) -> None:
    order = await tau.get("#w3220387")
    assert order is not None
    assert order.status == "cancelled"
    assert [(r.amount, r.payment_method_id) for r in order.refunds] == [(608.91, "paypal_5716091")]


async def test_tau_bench_find_by_email(tau: JsonOrderStore) -> None:
    orders = await tau.find_by_email("james.li4495@example.com")
    assert sorted(o.order_id for o in orders) == sorted(["#W2611340", "#W3632959", "#W4435622", "#W3638028"])


def test_tau_bench_without_users_has_no_email() -> None:
    store = JsonOrderStore.from_files(shared_data_dir() / "tau_bench_retail" / "orders.json")
    assert all(o.email is None for o in store._orders.values())


# --- malformed files ---------------------------------------------------------------------------

GOOD = {
    "order_id": "#W1000001",
    "user_id": "ann_lee_1",
    "items": [{"name": "Mug", "item_id": "1", "price": 9.5, "options": {"color": "red"}}],
    "fulfillments": [],
    "status": "pending",
    "payment_history": [{"transaction_type": "payment", "amount": 9.5, "payment_method_id": "paypal_1"}],
}


def _write(tmp_path: Path, data: object, name: str = "orders.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"status": None}, "'status' must be a non-empty string"),
        ({"items": "Mug"}, "'items' must be a list"),
        ({"items": [{"name": "Mug", "item_id": "1", "price": "9.5", "options": {}}]}, "items[0].price"),
        ({"items": [{"name": "Mug", "item_id": "1", "price": 9.5}]}, "missing field 'options'"),
        ({"items": [{"name": "Mug", "item_id": "1", "price": 9.5, "options": {"n": 1}}]}, "items[0].options"),
        ({"fulfillments": [{"tracking_id": "123", "item_ids": []}]}, "fulfillments[0].tracking_id"),
        ({"payment_history": [{"transaction_type": "gift", "amount": 1, "payment_method_id": "x"}]},
         "payment or refund"),
        ({"order_id": "#W9999999"}, "differs from its key"),
    ],
)
def test_malformed_record_names_file_and_order(tmp_path: Path, change: dict, message: str) -> None:
    path = _write(tmp_path, {"#W1000001": GOOD, "#W1000002": {**GOOD, "order_id": "#W1000002", **change}})
    with pytest.raises(ValueError) as info:
        JsonOrderStore.from_files(path)
    text = str(info.value)
    assert str(path) in text
    assert "'#W1000002'" in text
    assert message in text


def test_missing_field_names_order(tmp_path: Path) -> None:
    record = {k: v for k, v in GOOD.items() if k != "user_id"}
    path = _write(tmp_path, {"#W1000001": record})
    with pytest.raises(ValueError, match=r"order '#W1000001' is malformed: missing field 'user_id'"):
        JsonOrderStore.from_files(path)


def test_record_not_an_object(tmp_path: Path) -> None:
    path = _write(tmp_path, {"#W1000001": ["not", "an", "order"]})
    with pytest.raises(ValueError, match=r"order '#W1000001' is malformed: expected an object"):
        JsonOrderStore.from_files(path)


def test_bad_key_and_duplicate_ids(tmp_path: Path) -> None:
    path = _write(tmp_path, {"hello": GOOD})
    with pytest.raises(ValueError, match="'hello' is not an order id"):
        JsonOrderStore.from_files(path)
    path = _write(tmp_path, {"#W1000001": GOOD, "w1000001": GOOD})
    with pytest.raises(ValueError, match="duplicates order id #W1000001"):
        JsonOrderStore.from_files(path)


def test_invalid_json_and_wrong_shape(tmp_path: Path) -> None:
    path = tmp_path / "orders.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="orders.json: not valid JSON"):
        JsonOrderStore.from_files(path)
    path = _write(tmp_path, [GOOD])
    with pytest.raises(ValueError, match="orders.json: expected a JSON object, got list"):
        JsonOrderStore.from_files(path)
    with pytest.raises(FileNotFoundError):
        JsonOrderStore.from_files(tmp_path / "missing.json")


def test_malformed_users_file(tmp_path: Path) -> None:
    orders = _write(tmp_path, {"#W1000001": GOOD})
    users = _write(tmp_path, {"ann_lee_1": {"email": 42}}, "users.json")
    with pytest.raises(ValueError, match=r"users.json: user 'ann_lee_1': 'email' must be a string"):
        JsonOrderStore.from_files(orders, users)


async def test_order_email_beats_users_file(tmp_path: Path) -> None:
    orders = _write(tmp_path, {"#W1000001": GOOD, "#W1000002": {**GOOD, "order_id": "#W1000002",
                                                                "email": "own@example.com"}})
    users = _write(tmp_path, {"ann_lee_1": {"email": "Ann@Example.com"}}, "users.json")
    store = JsonOrderStore.from_files(orders, users)
    first, second = await store.get("#W1000001"), await store.get("#W1000002")
    assert first is not None and first.email == "Ann@Example.com"
    assert second is not None and second.email == "own@example.com"
    assert [o.order_id for o in await store.find_by_email("ann@example.com")] == ["#W1000001"]
