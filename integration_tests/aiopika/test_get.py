"""Queue.get: an empty get makes no span, whichever way it says so (the rest of Queue.get is in
integration_tests/contract)."""

from __future__ import annotations

import pytest
from aio_pika.abc import AbstractQueue
from aio_pika.exceptions import QueueEmpty

from broker_harness import Recorder

pytestmark = pytest.mark.usefixtures("instrumented")


@pytest.mark.asyncio
async def test_an_empty_get_makes_no_span(
    otel: Recorder,
    queue: AbstractQueue,
) -> None:
    """An empty get (None with fail=False, QueueEmpty otherwise) makes no span."""
    assert await queue.get(fail=False, timeout=10) is None
    with pytest.raises(QueueEmpty):
        await queue.get(timeout=10)
    assert otel.spans() == []
