"""The run's exchanges and queues: unique names, so runs and tests never collide on a shared broker.

The runner declares them (with plain, uninstrumented pika) before the services start and deletes
them afterwards; the services declare nothing. Queues are ``auto_delete`` with an ``x-expires``
and exchanges ``auto_delete``, so a run that crashes leaves nothing behind for long.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Final

from examples.order_flow.domain import REGIONS

__all__ = ["Topology"]

QUEUE_EXPIRES_MS: Final = 10 * 60 * 1000


@dataclass(frozen=True, slots=True)
class Topology:
    """Names of one run's exchanges and queues.

    * ``shop_exchange`` (topic): shop-api publishes ``orders.{region}``; ``srm_queue`` is bound to
      the regions srm-api serves (``orders.eu``, ``orders.us``), so ``orders.apac`` is unroutable.
    * ``production_exchange`` (direct): srm-api publishes jobs with ``job_key``; ``mes_queue`` gets them.
    * ``dead_exchange`` (fanout) and ``dead_queue``: what the broker drops from ``srm_queue`` and
      ``mes_queue`` (an expired message, say) is dead-lettered there, where the dead-letter watcher
      records it. The run sets ``x-dead-letter-exchange`` on its own queues; a deployment does it
      for every queue with ``deploy/rabbitmq/dead-letter-policy.sh`` (``orders.dlx`` ->
      ``orders.dead``).
    """

    shop_exchange: str
    srm_queue: str
    production_exchange: str
    mes_queue: str
    dead_exchange: str = "orders.dlx"
    dead_queue: str = "orders.dead"
    job_key: str = "jobs"

    @classmethod
    def named(cls, name: Callable[[str], str]) -> Topology:
        """A topology whose names come from ``name(role)`` (the tests pass their ``unique`` fixture)."""
        return cls(
            shop_exchange=name("shop"),
            srm_queue=name("srm.orders"),
            production_exchange=name("production"),
            mes_queue=name("mes.jobs"),
            dead_exchange=name("orders.dlx"),
            dead_queue=name("orders.dead"),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Topology:
        return cls(**data)

    def declare(self, url: str) -> None:
        """Declare the exchanges, queues and bindings on the broker at ``url``."""
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(url))
        try:
            channel = connection.channel()
            arguments = {"x-expires": QUEUE_EXPIRES_MS}
            channel.exchange_declare(self.dead_exchange, "fanout", auto_delete=True)
            channel.queue_declare(self.dead_queue, auto_delete=True, arguments=arguments)
            channel.queue_bind(self.dead_queue, self.dead_exchange)
            arguments = {**arguments, "x-dead-letter-exchange": self.dead_exchange}
            channel.exchange_declare(self.shop_exchange, "topic", auto_delete=True)
            channel.exchange_declare(self.production_exchange, "direct", auto_delete=True)
            channel.queue_declare(self.srm_queue, auto_delete=True, arguments=arguments)
            channel.queue_declare(self.mes_queue, auto_delete=True, arguments=arguments)
            for region in REGIONS:
                channel.queue_bind(self.srm_queue, self.shop_exchange, f"orders.{region}")
            channel.queue_bind(self.mes_queue, self.production_exchange, self.job_key)
        finally:
            connection.close()

    def delete(self, url: str) -> None:
        """Delete what :meth:`declare` made (best effort: auto-delete may have done it already)."""
        import pika

        with contextlib.suppress(Exception):
            connection = pika.BlockingConnection(pika.URLParameters(url))
            try:
                for queue in (self.srm_queue, self.mes_queue, self.dead_queue):
                    with contextlib.suppress(Exception):
                        connection.channel().queue_delete(queue)
                for exchange in (self.shop_exchange, self.production_exchange, self.dead_exchange):
                    with contextlib.suppress(Exception):
                        connection.channel().exchange_delete(exchange)
            finally:
                with contextlib.suppress(Exception):
                    connection.close()
