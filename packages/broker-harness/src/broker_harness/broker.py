"""Find a RabbitMQ to run against, in one place for tests, the demo and the benchmarks.

Order: ``RABBITMQ_URL``; a broker answering AMQP on 127.0.0.1:5672; a testcontainers RabbitMQ when
a Docker engine answers. "Answering" means a real AMQP handshake (the broker sends
``connection.start``), not just an open port, so a broker still booting is not mistaken for a
ready one. No client library is imported here, so the harness can serve a pika, an aio-pika or a
kombu session without dragging the others in.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

__all__ = ["HOW_TO_START", "Broker", "BrokerUnavailable", "find_broker", "unique_name"]

LOCAL_URL = "amqp://guest:guest@127.0.0.1:5672/"
CONTAINER_IMAGE = os.environ.get("RABBITMQ_IMAGE", "rabbitmq:3.13-alpine")

HOW_TO_START = (
    "No RabbitMQ found. Start one and run again:\n"
    "  - a local broker:   rabbitmq-server -detached    (or: sudo systemctl start rabbitmq-server)\n"
    "  - with Docker:      docker run -d --rm -p 5672:5672 rabbitmq:3.13-alpine\n"
    "                      (or just have a Docker engine running: the tests start one themselves)\n"
    "  - somewhere else:   export RABBITMQ_URL=amqp://user:password@host:5672/vhost"
)


class BrokerUnavailable(RuntimeError):
    """No RabbitMQ could be found or started; the message says how to get one."""


@dataclass(frozen=True)
class Broker:
    """Where the broker is. ``source`` says how it was found: env, local or container."""

    url: str
    source: str
    _container: Any = field(default=None, repr=False, compare=False)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 5672

    @property
    def username(self) -> str:
        return unquote(urlsplit(self.url).username or "guest")

    @property
    def password(self) -> str:
        return unquote(urlsplit(self.url).password or "guest")

    @property
    def vhost(self) -> str:
        path = urlsplit(self.url).path
        return unquote(path[1:]) if len(path) > 1 else "/"

    def url_for(self, scheme: str = "amqp") -> str:
        """The same broker under another URL scheme (``pyamqp`` for kombu, say)."""
        parts = urlsplit(self.url)
        return parts._replace(scheme=scheme).geturl()

    @property
    def local(self) -> bool:
        """True when this machine runs the broker and rabbitmqctl can administer it."""
        return self.source == "local" and shutil.which("rabbitmqctl") is not None


def amqp_handshake(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when ``host:port`` answers the AMQP 0-9-1 protocol header with a method frame."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            first = sock.recv(7)
    except OSError:
        return False
    # frame type 1 (method) on channel 0: connection.start
    return len(first) == 7 and first[0] == 1 and first[1:3] == b"\x00\x00"


def docker_available() -> bool:
    """True when a Docker engine answers (the client alone is not enough)."""
    try:
        import docker  # testcontainers' own dependency
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        client.ping()
        client.close()
    except Exception:
        return False
    return True


def _start_container(timeout: float = 120.0) -> Broker:
    # The generic container: testcontainers' RabbitMqContainer imports pika, which must not leak
    # into aio-pika or kombu sessions.
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    container = DockerContainer(CONTAINER_IMAGE).with_exposed_ports(5672)
    container.start()
    try:
        wait_for_logs(container, "Server startup complete", timeout=timeout)
        host = container.get_container_host_ip()
        port = int(container.get_exposed_port(5672))
        deadline = time.monotonic() + 30
        while not amqp_handshake(host, port):
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"the RabbitMQ container on {host}:{port} did not answer")
            time.sleep(0.5)
    except BaseException:
        container.stop()
        raise
    return Broker(f"amqp://guest:guest@{host}:{port}/", "container", container)


def find_broker(*, allow_container: bool = True) -> Broker:
    """The first broker that answers, in the documented order; :class:`BrokerUnavailable` if none."""
    env_url = os.environ.get("RABBITMQ_URL")
    if env_url:
        parts = urlsplit(env_url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 5672
        if not amqp_handshake(host, port, timeout=5.0):
            raise BrokerUnavailable(f"RABBITMQ_URL is set, but {host}:{port} does not answer AMQP")
        return Broker(env_url, "env")
    if amqp_handshake("127.0.0.1", 5672):
        return Broker(LOCAL_URL, "local")
    if allow_container and docker_available():
        return _start_container()
    raise BrokerUnavailable(HOW_TO_START)


def stop_broker(broker: Broker) -> None:
    """Stop a container the harness started; brokers it only found are left running."""
    if broker._container is not None:
        with contextlib.suppress(Exception):
            broker._container.stop()


@contextlib.contextmanager
def broker_session(*, allow_container: bool = True) -> Iterator[Broker]:
    """``with broker_session() as broker:``: a broker for the block, a started container stopped after."""
    broker = find_broker(allow_container=allow_container)
    try:
        yield broker
    finally:
        stop_broker(broker)


def unique_name(prefix: str = "t") -> str:
    """An exchange/queue name no other test, worker or run shares."""
    return f"otel-test.{prefix}.{os.getpid()}.{uuid.uuid4().hex[:12]}"


def rabbitmqctl(*args: str, timeout: float = 60.0) -> str:
    """Run ``rabbitmqctl`` against the local broker (fault-injection tests); its stdout."""
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        raise BrokerUnavailable("rabbitmqctl is not on PATH; fault tests need a local broker")
    done = subprocess.run(  # noqa: S603 - fixed executable, arguments from our tests
        [exe, *args], capture_output=True, text=True, timeout=timeout, check=True
    )
    return done.stdout


def close_connections(name_contains: str = "", reason: str = "test closes it") -> int:
    """Close (from the broker side) every client connection whose name contains the text; how many.

    Tests name their connections (``client_properties={"connection_name": ...}``) so only their
    own connections are closed on a shared broker.
    """
    listing = rabbitmqctl(
        "list_connections", "pid", "client_properties", "--quiet", "--no-table-headers"
    )
    closed = 0
    for line in listing.splitlines():
        pid, _, props = line.partition("\t")
        if not pid.startswith("<") or (name_contains and name_contains not in props):
            continue
        with contextlib.suppress(subprocess.CalledProcessError):
            rabbitmqctl("close_connection", pid, reason)
            closed += 1
    return closed


def redacted(url: str) -> str:
    """The URL with its password replaced, for messages and reports."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = f"{quote(parts.username or '')}:***@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return parts._replace(netloc=netloc).geturl()
