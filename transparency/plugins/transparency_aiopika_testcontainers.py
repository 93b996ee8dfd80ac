"""pytest plugin for aio-pika 9.5's own suite (``-p transparency_aiopika_testcontainers``): its
conftest subclasses testcontainers' ``DockerContainer`` to start RabbitMQ in Docker; this machine
has no Docker engine, so, before the conftest imports it, ``DockerContainer`` is replaced by a
stand-in whose "container" is the local broker (``TRANSPARENCY_AMQP_HOST``/``_PORT``, default
127.0.0.1:5672, guest/guest, vhost ``/``).

Loaded in both runs, so it is never a difference between them. Port 5671 (TLS) maps to itself,
where nothing listens: the TLS tests are deselected by name.
"""

from __future__ import annotations

import os
from typing import Any

from testcontainers.core import container

_HOST = os.environ.get("TRANSPARENCY_AMQP_HOST", "127.0.0.1")
_PORT = int(os.environ.get("TRANSPARENCY_AMQP_PORT", "5672"))


class LocalContainer:
    """Stands in for ``DockerContainer``: starting and stopping it does nothing."""

    def __init__(self, image: str, **kwargs: Any) -> None:
        self.image = image

    def with_exposed_ports(self, *ports: int) -> LocalContainer:
        return self

    def start(self) -> LocalContainer:
        return self

    def stop(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def get_container_host_ip(self) -> str:
        return _HOST

    def get_exposed_port(self, port: int) -> int:
        return _PORT if int(port) == 5672 else int(port)


container.DockerContainer = LocalContainer
