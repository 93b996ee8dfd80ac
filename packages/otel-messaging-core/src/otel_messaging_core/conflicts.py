"""Keep the opentelemetry-python-contrib instrumentor of the same library from tracing alongside ours.

Both can be active in one process: ``opentelemetry-bootstrap`` installs the contrib package,
``opentelemetry-instrument`` instruments every installed instrumentor in no fixed order, and a
service may call both. Then every message would be traced twice (two publish spans, two consumer
spans, and the contrib publish writes into the caller's headers). While our instrumentor is
instrumented, :class:`ContribGuard` keeps the contrib one off, whichever came first:

* contrib instrumented first: it is uninstrumented (its own ``uninstrument()``), with a warning;
* contrib instrumented later: its ``instrument()`` patches nothing, with a warning (its
  ``_instrument``/``_uninstrument`` are shadowed on its singleton instance, so its own
  bookkeeping goes on and a later ``uninstrument()`` of it cannot remove our patches).

Our ``uninstrument()`` removes the shadows; the contrib instrumentor is not switched back on.
The contrib module is only imported when it is installed, and only at ``instrument()`` time.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Final

__all__ = ["ContribGuard"]

logger: Final = logging.getLogger("otel_messaging_core")

_SHADOWED: Final = ("_instrument", "_uninstrument")


@dataclass(eq=False, slots=True)
class ContribGuard:
    """One contrib instrumentor kept off while ours is instrumented (see the module docstring).

    ``module`` and ``class_name`` locate the contrib instrumentor; ``ours`` and ``theirs`` are the
    distribution names the warnings give; ``entry_point`` is the contrib entry point name, which
    ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` takes.
    """

    module: str
    class_name: str
    _: KW_ONLY
    ours: str
    theirs: str
    entry_point: str
    #: the contrib instrumentor while it is kept off (``None``: not engaged)
    _engaged: Any = field(default=None, init=False, repr=False)

    @classmethod
    def of_library(cls, library: str, class_name: str, *, ours: str) -> ContribGuard:
        """The guard of opentelemetry-python-contrib's instrumentation of ``library``, named as
        contrib names every one: ``aio-pika`` is the distribution
        ``opentelemetry-instrumentation-aio-pika``, the module
        ``opentelemetry.instrumentation.aio_pika`` and the entry point ``aio-pika``; its
        instrumentor class is ``class_name``."""
        return cls(
            "opentelemetry.instrumentation." + library.replace("-", "_"),
            class_name,
            ours=ours,
            theirs="opentelemetry-instrumentation-" + library,
            entry_point=library,
        )

    def _instrumentor(self) -> Any:
        """The contrib instrumentor's singleton, or ``None`` when the package is not installed."""
        try:
            if importlib.util.find_spec(self.module) is None:
                return None
        except (ImportError, ValueError):  # a parent package missing, a broken install
            return None
        try:
            cls = getattr(importlib.import_module(self.module), self.class_name)
            return cls()  # BaseInstrumentor is a singleton: every caller gets this object
        except Exception:  # a contrib release that moved or broke: nothing to guard against
            logger.debug("could not load %s.%s", self.module, self.class_name, exc_info=True)
            return None

    def engage(self) -> None:
        """Our ``instrument()``: turn the contrib instrumentor off now and for later. Never raises."""
        try:
            theirs = self._instrumentor()
            if theirs is None:
                return
            if getattr(theirs, "is_instrumented_by_opentelemetry", False):
                logger.warning(
                    "%s and %s both instrument this process: every message would be traced "
                    "twice. %s turned %s off (uninstall %s, or set "
                    "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=%s).",
                    self.ours,
                    self.theirs,
                    self.ours,
                    self.theirs,
                    self.theirs,
                    self.entry_point,
                )
                theirs.uninstrument()
            theirs._instrument = self._refuse
            theirs._uninstrument = _nothing
            self._engaged = theirs
        except Exception:
            logger.debug("could not turn %s off", self.theirs, exc_info=True)

    def release(self) -> None:
        """Our ``uninstrument()``: the contrib instrumentor may instrument again. Never raises."""
        theirs, self._engaged = self._engaged, None
        if theirs is None:
            return
        try:
            if theirs.__dict__.get("_instrument") == self._refuse:
                for name in _SHADOWED:
                    theirs.__dict__.pop(name, None)
        except Exception:
            logger.debug("could not restore %s", self.theirs, exc_info=True)

    def _refuse(self, **_kwargs: Any) -> None:
        logger.warning(
            "%s was asked to instrument while %s is instrumented: ignored, so no message is "
            "traced twice (uninstall %s, or set OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=%s).",
            self.theirs,
            self.ours,
            self.theirs,
            self.entry_point,
        )


def _nothing(**_kwargs: Any) -> None:
    """The contrib ``_uninstrument`` while ours is instrumented: it patched nothing to undo."""
