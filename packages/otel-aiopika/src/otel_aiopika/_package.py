"""The client library versions this instrumentation supports (checked by BaseInstrumentor)."""

_instruments = ("aio-pika>=8,<11",)
_supports_metrics = True
