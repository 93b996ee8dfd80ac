"""The client library versions this instrumentation supports (checked by BaseInstrumentor)."""

_instruments = ("pika>=1.1,<2",)
_supports_metrics = True
