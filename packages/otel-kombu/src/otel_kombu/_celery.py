"""Recognising Celery's own messages, for ``skip_celery_messages=True``."""

from __future__ import annotations

from typing import Any, Final, Mapping

__all__ = ["CELERY_EVENT_EXCHANGE", "is_celery_message"]

# Celery's default event exchange; broadcast mailboxes (remote control, replies) end in ".pidbox".
CELERY_EVENT_EXCHANGE: Final = "celeryev"
_PIDBOX_SUFFIX: Final = ".pidbox"


def is_celery_message(headers: Mapping[Any, Any] | None, exchange: str) -> bool:
    """True for a Celery task message (task protocol 2 headers ``task`` and ``id``), event or broadcast."""
    if headers:
        try:
            if "task" in headers and "id" in headers:
                return True
        except Exception:  # a header table whose keys cannot be compared with str
            return False
    return exchange == CELERY_EVENT_EXCHANGE or exchange.endswith(_PIDBOX_SUFFIX)
