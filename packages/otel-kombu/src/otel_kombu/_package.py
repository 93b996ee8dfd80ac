"""The client library versions this instrumentation supports (checked by BaseInstrumentor)."""

_instruments = ("kombu>=5.3,<6",)
_supports_metrics = True
