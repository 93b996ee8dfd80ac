"""pytest plugin for aio-pika 10's own suite (``-p transparency_aiopika_docker``): its conftest
starts RabbitMQ in Docker; this machine has no Docker engine, so the suite's Docker client is
replaced by one whose "container" is the local broker (``TRANSPARENCY_AMQP_HOST``/``_PORT``,
default 127.0.0.1:5672, guest/guest, vhost ``/``).

The replacement happens when pytest imports this plugin, before it imports the suite's
conftest, which binds ``check_docker_available`` and ``DockerClient`` by name. Loaded in both
runs, so it is never a difference between them. Tests that need a real container (stopping it,
TLS on 5671) fail here and are deselected by name.
"""

from __future__ import annotations

import os
from typing import Any

from tests import docker_client  # the suite's own module: pytest runs in the unpacked source

_HOST = os.environ.get("TRANSPARENCY_AMQP_HOST", "127.0.0.1")
_PORT = int(os.environ.get("TRANSPARENCY_AMQP_PORT", "5672"))


class LocalBroker:
    """Stands in for ``tests.docker_client.DockerClient``: every run() is the local broker."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def run(self, image: str, ports: list[str], **kwargs: Any) -> Any:
        return docker_client.ContainerInfo(
            id=f"local-{image}", host=_HOST, ports={"5672/tcp": _PORT}
        )

    def kill(self, container_id: str) -> None:
        pass

    def remove(self, container_id: str) -> None:
        pass

    def stop(self, container_id: str, timeout: int = 10) -> None:
        pass


def check_docker_available() -> Any:
    return docker_client.DockerHostInfo(is_tcp=False)


docker_client.DockerClient = LocalBroker
docker_client.check_docker_available = check_docker_available
