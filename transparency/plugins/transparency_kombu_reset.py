"""pytest plugin for kombu's integration suite (``-p transparency_kombu_reset``), loaded in both
runs: deletes the fixed-name queues the suite declares, on RabbitMQ and on Redis, before the run.

The suite expects a fresh broker per run (its CI starts containers); some of its tests leave
messages behind (a requeue test never acks; a failing test never reaches its ack), and on a
broker that lives on, the next run would read them. ``TRANSPARENCY_LEFTOVERS`` holds the names
(lists/kombu-integration/leftovers.txt), one a line.
"""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    import kombu

    names = [n for n in os.environ.get("TRANSPARENCY_LEFTOVERS", "").splitlines() if n]
    host = os.environ.get("RABBITMQ_HOST", "127.0.0.1")
    amqp_port = os.environ.get("RABBITMQ_5672_TCP", "5672")
    redis_host = os.environ.get("REDIS_HOST", "127.0.0.1")
    redis_port = os.environ.get("REDIS_6379_TCP", "6379")
    redis = f"redis://{redis_host}:{redis_port}/"
    brokers: tuple[tuple[str, dict[str, str]], ...] = (
        (f"pyamqp://guest:guest@{host}:{amqp_port}//", {}),
        (redis, {}),
        # test_redis.py runs every test a second time with this key prefix
        (redis, {"global_keyprefix": "_prefixed_"}),
    )
    for url, options in brokers:
        with kombu.Connection(url, connect_timeout=10, transport_options=options) as connection:
            channel = connection.default_channel
            for name in names:
                if url.startswith("redis"):
                    # kombu's Redis queue_delete only deletes queues this channel bound itself;
                    # purge empties the queue's lists (every priority) whoever made them
                    channel.queue_purge(name)
                else:
                    # RabbitMQ deletes a queue that is not there without complaint
                    channel.queue_delete(name)
