"""Small helpers shared by the wrappers."""

from __future__ import annotations

__all__ = ["body_size"]


def body_size(body: object) -> int | None:
    """The size in bytes of a message body as kombu or amqp hold it (bytes, or text amqp decoded)."""
    if type(body) is bytes:
        return len(body)
    if isinstance(body, (bytes, bytearray, memoryview)):
        return len(body)
    if isinstance(body, str):
        return len(body.encode("utf-8", "surrogatepass"))
    return None
