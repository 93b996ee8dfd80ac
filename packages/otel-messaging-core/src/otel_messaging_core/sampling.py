"""The sampler shortcut: skip building a span the tracer provider's sampler would drop anyway.

A message whose trace is not sampled upstream still travels (its context is passed on) and is
counted; only the span is skipped, and only when the sampler certainly follows the parent.
"""

from __future__ import annotations

from typing import Final

from opentelemetry import trace
from opentelemetry.trace import SpanContext, TraceFlags, TracerProvider

from otel_messaging_core._private_api import sampler_drops_unsampled

__all__ = ["UnsampledShortcut"]

_SAMPLED: Final = int(TraceFlags.SAMPLED)


class UnsampledShortcut:
    """Answers :meth:`skips_child_of` for one instrumentor's tracer provider (or the global one)."""

    __slots__ = ("_drops_unsampled", "_provider", "_sampler_provider")

    def __init__(self, provider: TracerProvider | None) -> None:
        self._provider = provider
        self._sampler_provider: object = None
        self._drops_unsampled = False

    def drops_unsampled(self) -> bool:
        """True when the sampler certainly drops a span under any valid not-sampled parent
        (see :meth:`skips_child_of`). Decided once for a given provider; the global one is
        looked up each time (it may still be replaced)."""
        provider = self._provider or trace.get_tracer_provider()
        if provider is self._sampler_provider:
            return self._drops_unsampled
        sampler = getattr(provider, "sampler", None)
        drops = sampler_drops_unsampled(sampler)
        if sampler is not None:  # a proxy provider may still be replaced: look again next time
            self._sampler_provider = provider
            self._drops_unsampled = drops
        return drops

    def skips_child_of(self, parent: SpanContext) -> bool:
        """True when a span under ``parent`` would certainly not be sampled, so need not be made.

        That is the case when ``parent`` is valid and not sampled, and the tracer provider's
        sampler is the SDK's ``ParentBased`` with not-sampled parents (local and remote) going to
        ``AlwaysOffSampler`` (the default, and what ``parentbased_traceidratio`` configures), or
        ``AlwaysOffSampler`` itself, as far as its description tells
        (:func:`~otel_messaging_core._private_api.sampler_drops_unsampled`); any other sampler
        is always asked.
        """
        # trace_flags is an int: bit 0 is "sampled" (docs/benchmarks.md: costs)
        if parent.trace_flags & _SAMPLED or not parent.is_valid:
            return False
        return self.drops_unsampled()
