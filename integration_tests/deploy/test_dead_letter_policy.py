"""deploy/rabbitmq/dead-letter-policy.sh turns the broker's silent drops into dead letters.

Run against the real broker on this machine (RabbitMQ 3.10.8 here), each test in a vhost of its
own that is deleted afterwards, so the policy never touches another test's queues. rabbitmqctl
administers only a local broker: the tests skip, saying so, when the broker is elsewhere.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from broker_harness import Broker, unique_name
from broker_harness.broker import rabbitmqctl

from .deploy_files import DEPLOY, doc_section

pika = pytest.importorskip("pika", reason="the dead-letter tests publish and consume with pika")

SCRIPT = DEPLOY / "rabbitmq" / "dead-letter-policy.sh"
DLX = "orders.dlx"
DLQ = "orders.dead"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
WAIT_S = 20.0  # bound on waiting for a dead letter to arrive


def _skip_unless_local(rabbitmq: Broker) -> None:
    if not rabbitmq.local or shutil.which("sh") is None:
        pytest.skip("rabbitmqctl can administer only a broker running on this machine")


@contextlib.contextmanager
def _own_vhost(rabbitmq: Broker) -> Iterator[str]:
    name = unique_name("dlx")
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, rabbitmq.username, ".*", ".*", ".*")
        yield name
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            rabbitmqctl("delete_vhost", name)


@pytest.fixture
def vhost(rabbitmq: Broker) -> Iterator[str]:
    """A vhost only this test uses, readable and writable by the broker's user, deleted after."""
    _skip_unless_local(rabbitmq)
    with _own_vhost(rabbitmq) as name:
        yield name


@pytest.fixture(scope="module")
def with_policy(rabbitmq: Broker) -> Iterator[str]:
    """A vhost of this module after the operator ran the script (each test uses its own queues)."""
    _skip_unless_local(rabbitmq)
    with _own_vhost(rabbitmq) as name:
        done = run_script(name)
        assert done.returncode == 0, done.stderr
        yield name


@pytest.fixture
def open_channel(rabbitmq: Broker) -> Iterator[Callable[[str], Any]]:
    """``open_channel(vhost)``: a pika channel on that vhost; every connection closed after the test."""
    opened: list[Any] = []

    def open_on(vhost: str) -> Any:
        params = pika.URLParameters(
            f"amqp://{quote(rabbitmq.username, safe='')}:{quote(rabbitmq.password, safe='')}"
            f"@{rabbitmq.host}:{rabbitmq.port}/{quote(vhost, safe='')}"
        )
        params.client_properties = {"connection_name": f"deploy-dlx-test {vhost}"}
        connection = pika.BlockingConnection(params)
        opened.append(connection)
        return connection.channel()

    yield open_on
    for connection in opened:
        with contextlib.suppress(Exception):
            connection.close()


def run_script(vhost: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The operator's command: the script with the given vhost and options."""
    return subprocess.run(
        ["sh", str(SCRIPT), "-p", vhost, *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def policies(vhost: str) -> dict[str, list[str]]:
    listing = rabbitmqctl("list_policies", "-p", vhost, "-q", "--no-table-headers")
    rows = [line.split("\t") for line in listing.splitlines() if line.count("\t") >= 5]
    return {row[1]: row for row in rows}


def queue_policies(vhost: str) -> dict[str, str]:
    listing = rabbitmqctl("list_queues", "-p", vhost, "-q", "--no-table-headers", "name", "policy")
    found = {}
    for line in listing.splitlines():
        name, _, policy = line.partition("\t")
        if name:
            found[name] = policy
    return found


def dead_letter(channel: Any, body: bytes) -> Any:
    """The properties of the dead letter with this body, waiting at most WAIT_S for it."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        method, properties, received = channel.basic_get(DLQ, auto_ack=True)
        if method is None:
            time.sleep(0.05)
        elif received == body:
            return properties
    pytest.fail(f"{body!r} did not reach {DLQ} within {WAIT_S:.0f} s")


def publish(channel: Any, queue: str, body: bytes, **properties: Any) -> None:
    headers = {"traceparent": TRACEPARENT, "baggage": "order.id=17"}
    channel.basic_publish(
        "", queue, body, pika.BasicProperties(headers=headers, delivery_mode=2, **properties)
    )


def get_one(channel: Any, queue: str) -> Any:
    """basic_get without auto-ack until a message comes, at most WAIT_S; its method frame."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        method, _properties, _body = channel.basic_get(queue, auto_ack=False)
        if method is not None:
            return method
        time.sleep(0.05)
    pytest.fail(f"nothing in {queue} within {WAIT_S:.0f} s")


def test_every_queue_gets_the_dead_letter_exchange_but_the_dead_letter_queue_does_not(
    with_policy: str, open_channel: Callable[[str], Any]
) -> None:
    """A queue declared later is under the policy; orders.dead is not, so dead letters cannot loop."""
    channel = open_channel(with_policy)
    channel.queue_declare("srm.orders", durable=True)
    channel.queue_declare("mes.jobs", durable=True)
    applied = queue_policies(with_policy)
    assert applied["srm.orders"] == applied["mes.jobs"] == "dead-letter"
    assert applied[DLQ] == ""
    (row,) = policies(with_policy).values()
    assert row[3] == "queues"
    assert row[4] == '{"dead-letter-exchange":"orders.dlx"}'
    bindings = rabbitmqctl(
        "list_bindings",
        "-p",
        with_policy,
        "-q",
        "--no-table-headers",
        "source_name",
        "destination_name",
    )
    assert f"{DLX}\t{DLQ}" in bindings.splitlines()


def _expire(channel: Any, queue: str, body: bytes) -> None:
    channel.queue_declare(queue, durable=True)
    publish(channel, queue, body, expiration="1")


def _reject(channel: Any, queue: str, body: bytes) -> None:
    channel.queue_declare(queue, durable=True)
    publish(channel, queue, body)
    channel.basic_reject(get_one(channel, queue).delivery_tag, requeue=False)


def _overflow(channel: Any, queue: str, body: bytes) -> None:
    channel.queue_declare(queue, durable=True, arguments={"x-max-length": 1})
    publish(channel, queue, body)
    publish(channel, queue, b"the next order")


def _delivery_limit(channel: Any, queue: str, body: bytes) -> None:
    channel.queue_declare(
        queue, durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 1}
    )
    publish(channel, queue, body)
    # delivered and returned twice: over the limit of one redelivery
    for _attempt in range(2):
        channel.basic_nack(get_one(channel, queue).delivery_tag, requeue=True)


DROPS: dict[str, Callable[[Any, str, bytes], None]] = {
    "expired": _expire,
    "rejected": _reject,
    "maxlen": _overflow,
    "delivery_limit": _delivery_limit,
}


@pytest.mark.parametrize("reason", sorted(DROPS))
def test_a_message_the_broker_would_drop_is_dead_lettered_with_its_trace_headers(
    with_policy: str, open_channel: Callable[[str], Any], reason: str
) -> None:
    """Expiry, overflow, a delivery limit and a reject put the message in orders.dead with x-death."""
    channel = open_channel(with_policy)
    queue = f"srm.orders.{reason}"
    body = f"order 17 ({reason})".encode()
    DROPS[reason](channel, queue, body)
    headers = dead_letter(channel, body).headers
    assert headers["traceparent"] == TRACEPARENT, "the order's trace survives dead-lettering"
    assert headers["baggage"] == "order.id=17"
    (death, *_) = headers["x-death"]
    assert death["reason"] == reason
    assert death["queue"] == queue
    assert headers["x-first-death-reason"] == reason
    assert headers["x-first-death-queue"] == queue


def test_an_operator_policy_merges_with_the_dead_letter_policy(
    with_policy: str, open_channel: Callable[[str], Any]
) -> None:
    """An operator policy's length limit applies next to the user policy, and what it drops is dead-lettered."""
    rabbitmqctl("set_operator_policy", "-p", with_policy, "cap", "^capped\\.", '{"max-length":1}')
    channel = open_channel(with_policy)
    channel.queue_declare("capped.orders", durable=True)
    assert queue_policies(with_policy)["capped.orders"] == "dead-letter"
    publish(channel, "capped.orders", b"capped order 17")
    publish(channel, "capped.orders", b"capped order 18")
    properties = dead_letter(channel, b"capped order 17")
    assert properties.headers["x-death"][0]["reason"] == "maxlen"


def test_running_the_script_twice_changes_nothing(with_policy: str) -> None:
    """A second run succeeds and leaves one policy, one dead-letter queue and one binding."""
    before = (policies(with_policy), queue_policies(with_policy))
    again = run_script(with_policy)
    assert again.returncode == 0, again.stderr
    assert (policies(with_policy), queue_policies(with_policy)) == before


def test_a_vhost_with_other_policies_is_left_alone_until_the_operator_merges(
    vhost: str, open_channel: Callable[[str], Any]
) -> None:
    """Another policy makes the script stop and name it, since only one policy applies per queue."""
    rabbitmqctl(
        "set_policy", "-p", vhost, "--priority", "5", "limits", "^srm\\.", '{"max-length":1000}'
    )
    refused = run_script(vhost)
    assert refused.returncode == 3
    assert "limits" in refused.stderr
    assert set(policies(vhost)) == {"limits"}, "nothing may change before the operator merges"
    # the documented merge: the DLX key into the existing policy, then ours below it with -f
    rabbitmqctl(
        "set_policy", "-p", vhost, "--priority", "5", "limits", "^srm\\.",
        '{"max-length":1000,"dead-letter-exchange":"orders.dlx"}',
    )  # fmt: skip
    forced = run_script(vhost, "-f", "-n", "0")
    assert forced.returncode == 0, forced.stderr
    channel = open_channel(vhost)
    channel.queue_declare("srm.orders", durable=True)
    channel.queue_declare("mes.jobs", durable=True)
    applied = queue_policies(vhost)
    assert applied["srm.orders"] == "limits"
    assert applied["mes.jobs"] == "dead-letter"
    publish(channel, "srm.orders", b"order 17", expiration="1")
    assert dead_letter(channel, b"order 17").headers["x-death"][0]["reason"] == "expired"


def test_the_docs_tell_operators_which_drops_become_dead_letters() -> None:
    """docs/deploy.md names the script and each reason RabbitMQ dead-letters for, and the one-policy rule."""
    section = doc_section("deploy.md", "Dead letters instead of silent drops")
    assert "deploy/rabbitmq/dead-letter-policy.sh" in section
    for reason in DROPS:
        assert f"`{reason}`" in section, reason
    assert "one policy" in section
    assert Path(SCRIPT).stat().st_mode & 0o111, "the script is executable"
