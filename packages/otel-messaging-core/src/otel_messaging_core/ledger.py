"""The unsettled-delivery ledger: RabbitMQ's settle rules, written once for every plugin.

A manual-ack delivery is settled by ``basic.ack`` / ``basic.nack`` / ``basic.reject`` naming its
delivery tag; ``multiple=True`` settles every outstanding delivery up to that tag, and with tag
``0`` every outstanding one. Tags grow per channel, but consumers dispatch at different times
(and aio-pika runs handlers concurrently), so records are not always in tag order. A plugin keeps
one ledger per channel, keyed by delivery tag, and frees it when the channel closes.
"""

from __future__ import annotations

from typing import Final, TypeVar

__all__ = ["MAX_UNSETTLED", "DeliveryLedger"]

#: A consumer that never settles would otherwise grow the ledger without bound; past this many
#: records the oldest is dropped (its settle then has no record; the message is unaffected).
MAX_UNSETTLED: Final = 65536

_T = TypeVar("_T")


class DeliveryLedger(dict[int, _T]):
    """Records by delivery tag, bounded (oldest dropped first); a plain ``dict`` otherwise."""

    __slots__ = ("limit",)

    def __init__(self, limit: int = MAX_UNSETTLED) -> None:
        super().__init__()
        self.limit = limit

    def track(self, delivery_tag: int, record: _T) -> None:
        """Keep ``record`` until the delivery is settled (or the ledger overflows)."""
        self[delivery_tag] = record
        if len(self) > self.limit:
            self.drop_oldest()

    def drop_oldest(self) -> None:
        """Drop the oldest record: what :meth:`track` does past :attr:`limit` records. A plugin
        that keeps a record without the call (``ledger[tag] = record`` on its hottest path)
        calls it when ``len(ledger) > ledger.limit``."""
        del self[next(iter(self))]

    def take(self, delivery_tag: int, multiple: bool) -> list[_T]:
        """The records one ack/nack/reject settles, removed from the ledger."""
        if not multiple:
            found = self.pop(delivery_tag, None)
            return [] if found is None else [found]
        if not delivery_tag:  # multiple with tag 0: every outstanding delivery
            settled = list(self.values())
            self.clear()
            return settled
        # not always in tag order: scan (multiple acks are rare next to messages)
        tags = [tag for tag in self if tag <= delivery_tag]
        return [self.pop(tag) for tag in tags]

    def forget(self, delivery_tag: int, multiple: bool) -> None:
        """Remove what :meth:`take` would return, for a settle with nothing to record (the usual
        ack: :meth:`~otel_messaging_core.MessagingTelemetry.quiet_settle`), without a list."""
        if multiple:
            self.take(delivery_tag, multiple)
        else:
            self.pop(delivery_tag, None)
