"""Runnable examples; ``python -m examples.order_flow`` is the demo (``nox -s demo``)."""
