"""Celery's own messages: which kinds ``skip_celery_messages`` leaves untraced, and task ids.

Celery sends three kinds of message through kombu:

``tasks``
    task messages, recognised by their task protocol 2 headers ``task`` and ``id`` (any queue);
``control``
    remote control through kombu's pidbox: broadcasts to the ``celery.pidbox`` exchange (worker
    start-up sync, ``celery inspect``/``control``, ``app.control.ping()``) and their replies
    through ``reply.celery.pidbox``: every exchange whose name ends in ``.pidbox``;
``events``
    the ``celeryev`` exchange: every worker's heartbeat every two seconds, task events with ``-E``,
    and each worker's gossip and every monitor consuming them.

Control and events are recognised by the exchange alone, so that answer is cached per exchange
name (a bounded dict); only the task check reads the headers of each message, two dict lookups.
"""

from __future__ import annotations

from typing import Any, Final, Literal, Mapping, get_args

__all__ = [
    "CELERY_EVENT_EXCHANGE",
    "CELERY_KINDS",
    "DEFAULT_SKIP",
    "CelerySkip",
    "celery_skip",
    "is_celery_message",
    "task_id",
]

# Celery's default event exchange (setting ``event_exchange``); broadcast mailboxes (remote
# control, replies) end in ".pidbox" (kombu.pidbox.Mailbox).
CELERY_EVENT_EXCHANGE: Final = "celeryev"
_PIDBOX_SUFFIX: Final = ".pidbox"

CeleryKind = Literal["tasks", "control", "events"]
#: What ``skip_celery_messages`` can name, in this order.
CELERY_KINDS: Final[tuple[CeleryKind, ...]] = get_args(CeleryKind)
#: Not traced by default: what an idle worker fleet sends all the time, at a rate that grows with
#: the square of the number of workers (each worker consumes every worker's heartbeats).
DEFAULT_SKIP: Final[tuple[CeleryKind, ...]] = ("control", "events")

_MAX_EXCHANGES: Final = 256


def _exchange_kind(exchange: str) -> CeleryKind | None:
    if exchange == CELERY_EVENT_EXCHANGE:
        return "events"
    if exchange.endswith(_PIDBOX_SUFFIX):
        return "control"
    return None


def _is_task(headers: Mapping[Any, Any] | None) -> bool:
    """Task protocol 2 headers ``task`` and ``id``."""
    if not headers:
        return False
    try:
        return "task" in headers and "id" in headers
    except Exception:  # a header table whose keys cannot be compared with str
        return False


def task_id(headers: Mapping[Any, Any] | None) -> str | None:
    """The task id of a Celery task message (protocol 2 header ``id``), else ``None``.

    Celery sets no AMQP ``message_id``; its instrumentation records this id as
    ``messaging.message.id``, so ours does too when the message has no ``message_id``.
    """
    if not _is_task(headers):
        return None
    found = headers.get("id")  # type: ignore[union-attr]
    return found if type(found) is str and found else None


class CelerySkip:
    """Which kinds of Celery message are left untraced; one per ``instrument()`` call."""

    __slots__ = ("_exchanges", "kinds", "tasks")

    def __init__(self, kinds: tuple[str, ...]) -> None:
        self.kinds = kinds
        self.tasks = "tasks" in kinds
        self._exchanges: dict[str, bool] = {}

    def skips(self, headers: Mapping[Any, Any] | None, exchange: str) -> bool:
        """True when this message is of a kind left untraced."""
        skipped = self._exchanges.get(exchange)
        if skipped is None:
            if len(self._exchanges) >= _MAX_EXCHANGES:
                self._exchanges.clear()
            skipped = self._exchanges[exchange] = _exchange_kind(exchange) in self.kinds
        if skipped:
            return True
        return self.tasks and _is_task(headers)


def celery_skip(kinds: tuple[str, ...]) -> CelerySkip | None:
    """The skip rule for these kinds; ``None`` when nothing is skipped (no check at all)."""
    return CelerySkip(kinds) if kinds else None


def is_celery_message(headers: Mapping[Any, Any] | None, exchange: str) -> bool:
    """True for a Celery task message (task protocol 2 headers ``task`` and ``id``), event or broadcast."""
    return _exchange_kind(exchange) is not None or _is_task(headers)
