"""The order flow: an online shop, an order service and a manufacturing system talking over RabbitMQ.

Three services, each its own process and ``service.name``:

* ``shop-api`` (aio-pika) takes ~20 orders and publishes each one, with the order id in baggage
  as ``order.id`` so it rides along to every hop;
* ``srm-api`` (kombu) consumes an order, checks stock and publishes a production job (pika);
* ``mes`` (pika, callbacks) consumes the job, processes the order's file and acks;
* ``watcher`` runs ``otel_pika.dead_letters`` on the run's dead-letter queue.

Four orders get lost the way real ones do: one is routed with a key no queue is bound to (a
mandatory publish the broker returns: ``unroutable`` at ``shop-api``), one names a SKU the stock
check does not know (the handler raises at ``srm-api``), one carries a corrupt file (``mes``
rejects it without requeue: ``rejected``), and an express order's TTL runs out in ``srm.orders``
while srm-api is busy with a slow bulk order (the broker dead-letters it: lost at the broker,
``dead_letter:expired``, recorded by the watcher in the order's trace). Where a service knows
why, it says so on the span that failed (status description, exception event, attributes), so
the reason is in the trace.

``python -m examples.order_flow [--orders N] [--consumer-context parent|link]`` finds a broker,
declares exchanges and queues for this run only, starts an OTLP/HTTP receiver, runs the three
services and the watcher as subprocesses exporting to it, and prints where every order went and why the lost
ones were lost, readable at 80 columns. Modules:

* :mod:`.domain`: the orders and what should become of each (pure data);
* :mod:`.topology`: the run's exchange and queue names, declared and deleted by the runner;
* :mod:`.receiver`: the OTLP/HTTP receiver (stdlib ``http.server`` + ``opentelemetry-proto``);
* :mod:`.analysis`: pure functions over the received data (orders, fates, hops, percentiles), shared
  with the cross-process tests in ``integration_tests/flow``;
* :mod:`.runner`: runs one flow and returns what was received;
* :mod:`.report`: renders a run with ``rich``;
* :mod:`.shop`, :mod:`.srm`, :mod:`.mes`, :mod:`.watcher` and :mod:`.service` (what they share).
"""
