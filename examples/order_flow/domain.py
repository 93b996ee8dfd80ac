"""The orders of one run and what should become of each: plain data the services and the report share.

Nothing in the services says "lose order 17". The plan gives a few orders the data that loses
them in real systems: a region no queue is bound to, a SKU the stock list does not know, a file
whose checksum does not match, and an express order (a per-message TTL) stuck behind a bulk
order whose stock srm-api counts slowly, so it expires in srm-api's queue and the broker
dead-letters it. The services just do their jobs on that data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "CHECKSUM_ACTUAL_KEY",
    "CHECKSUM_EXPECTED_KEY",
    "COMPLETED",
    "LOST",
    "MES",
    "REGIONS",
    "SHOP",
    "SRM",
    "SERVICES",
    "SKU_KEY",
    "STOCK",
    "BROKER",
    "DEAD_LETTER_EXPIRED",
    "EXPRESS_TTL_MS",
    "WATCHER",
    "CorruptFile",
    "Expectation",
    "Order",
    "UnknownSku",
    "check_stock",
    "error_type_of",
    "job_for",
    "plan_orders",
    "stock_check_seconds",
    "verify_file",
]

SHOP, SRM, MES = "shop-api", "srm-api", "mes"
WATCHER: Final = "watcher"  # otel_pika.dead_letters on the run's dead-letter queue
SERVICES: Final = (SHOP, SRM, MES, WATCHER)
BROKER: Final = "broker"  # where an order is lost when the broker dead-letters it
DEAD_LETTER_EXPIRED: Final = "dead_letter:expired"  # error.type of the span marking the death
COMPLETED: Final = "completed"
LOST: Final = "lost"

# What srm-api can build. Anything else is an UnknownSku.
STOCK: Final = {"SKU-1001": 40, "SKU-1002": 25, "SKU-1003": 60, "SKU-1004": 15}
REGIONS: Final = ("eu", "us")  # the regions srm-api's queue is bound to
EXPRESS_TTL_MS: Final = 1000  # an express order must be picked up within a second, or it expires
BULK_QUANTITY: Final = 500  # from this quantity on, srm-api counts the stock in the warehouse
WAREHOUSE_COUNT_S: Final = 2.5  # ... which takes this long

# Attributes a service sets on the span that failed, next to its status description, so the
# reason shows in Jaeger (and in the report) without the logs. Listed in docs/find-a-lost-order.md.
SKU_KEY: Final = "srm.sku"  # the SKU srm-api checked (on ``check stock``)
CHECKSUM_EXPECTED_KEY: Final = "mes.file.checksum.expected"  # sha256 the order was sent with
CHECKSUM_ACTUAL_KEY: Final = "mes.file.checksum.actual"  # sha256 of the file MES received


class UnknownSku(LookupError):
    """The stock list does not know the ordered SKU (srm-api's handler raises it)."""

    def __init__(self, order_id: object, sku: object) -> None:
        super().__init__(f"order {order_id}: unknown SKU {sku!r}: not in srm-api's stock list")
        self.sku = str(sku)


class CorruptFile(ValueError):
    """A production file whose checksum does not match its content (sha256, hex)."""

    def __init__(self, order_id: object, expected: str, actual: str) -> None:
        super().__init__(
            f"order {order_id}: file checksum mismatch: expected sha256 {expected}, got {actual}"
        )
        self.expected = expected
        self.actual = actual


def error_type_of(exc_type: type[BaseException]) -> str:
    """``error.type`` for an exception: its qualified class name, as the instrumentation records it."""
    return f"{exc_type.__module__}.{exc_type.__qualname__}"


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the flow is designed to do with one order: completed, or lost at a service with an error type."""

    status: str
    service: str
    error_type: str | None = None


@dataclass(frozen=True, slots=True)
class Order:
    """One order as the shop takes it."""

    order_id: int
    region: str
    sku: str
    quantity: int
    file: str  # the production file (G-code, say) the order ships with
    checksum: str
    work_ms: int  # how long MES takes to process the file
    expected: Expectation
    ttl_ms: int | None = None  # express orders: the shop publishes them with this expiration

    def payload(self) -> dict[str, Any]:
        """The order message shop-api publishes."""
        return {
            "order_id": self.order_id,
            "region": self.region,
            "sku": self.sku,
            "quantity": self.quantity,
            "file": self.file,
            "checksum": self.checksum,
            "work_ms": self.work_ms,
        }

    @property
    def routing_key(self) -> str:
        return f"orders.{self.region}"


def _file_for(order_id: int, sku: str) -> str:
    lines = [f"; order {order_id} {sku}"]
    lines.extend(f"G1 X{(order_id * 7 + i * 13) % 200} Y{(i * 29) % 150} F1200" for i in range(12))
    return "\n".join(lines)


def _checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def lost_order_ids(count: int) -> tuple[int, int, int, int]:
    """The ids of the unroutable, the expired (express), the unknown-SKU and the corrupt-file
    order; the order just before the expired one is the slow bulk order (it completes)."""
    if count < 5:
        raise ValueError("the flow needs at least 5 orders (4 get lost, at least 1 completes)")
    if count >= 19:
        return 7, 19, 13, 17  # the slow order (18) holds up only the last two
    return count - 2, count - 3, count - 1, count


def plan_orders(count: int = 20) -> list[Order]:
    """``count`` orders, ids 1..count; three of them carry what gets them lost (see module doc)."""
    unroutable, expired, unknown_sku, corrupt = lost_order_ids(count)
    skus = sorted(STOCK)
    orders = []
    for order_id in range(1, count + 1):
        region = REGIONS[order_id % len(REGIONS)]
        sku = skus[order_id % len(skus)]
        expected = Expectation(COMPLETED, MES)
        quantity, ttl_ms = 1 + order_id % 5, None
        if order_id == expired - 1:
            quantity = BULK_QUANTITY  # srm-api is slow on this one; the next order waits
        elif order_id == expired:
            ttl_ms = EXPRESS_TTL_MS  # it waits longer than that in srm-api's queue
            expected = Expectation(LOST, BROKER, DEAD_LETTER_EXPIRED)
        elif order_id == unroutable:
            region = "apac"  # no queue is bound to orders.apac: the broker returns the message
            expected = Expectation(LOST, SHOP, "unroutable")
        elif order_id == unknown_sku:
            sku = "SKU-404"
            expected = Expectation(LOST, SRM, error_type_of(UnknownSku))
        file = _file_for(order_id, sku)
        checksum = _checksum(file)
        if order_id == corrupt:
            file = file[: len(file) // 2]  # truncated on the way: the checksum no longer matches
            expected = Expectation(LOST, MES, error_type_of(CorruptFile))
        # 20-140 ms, varying with the order so p50 and p95 differ
        work_ms = 20 + (order_id * 53) % 121
        orders.append(
            Order(order_id, region, sku, quantity, file, checksum, work_ms, expected, ttl_ms)
        )
    return orders


def check_stock(order: dict[str, Any]) -> int:
    """The units in stock for the order's SKU; :class:`UnknownSku` for a SKU we do not build."""
    sku = order.get("sku")
    if sku not in STOCK:
        raise UnknownSku(order.get("order_id"), sku)
    return STOCK[sku]


def stock_check_seconds(order: dict[str, Any]) -> float:
    """How long srm-api takes to check the stock: a bulk order is counted in the warehouse."""
    quantity = order.get("quantity")
    return WAREHOUSE_COUNT_S if isinstance(quantity, int) and quantity >= BULK_QUANTITY else 0.005


def job_for(order: dict[str, Any]) -> bytes:
    """The production job srm-api sends to MES for an order (JSON bytes)."""
    job = {
        "order_id": order["order_id"],
        "sku": order["sku"],
        "quantity": order["quantity"],
        "file": order["file"],
        "checksum": order["checksum"],
        "work_ms": order["work_ms"],
    }
    return json.dumps(job).encode()


def verify_file(job: dict[str, Any]) -> None:
    """Raise :class:`CorruptFile` when the job's file does not match its checksum."""
    expected, actual = str(job.get("checksum")), _checksum(str(job.get("file", "")))
    if actual != expected:
        raise CorruptFile(job.get("order_id"), expected, actual)
