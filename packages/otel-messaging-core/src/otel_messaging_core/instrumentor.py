"""The instrumentor lifecycle every plugin shares, as a mixin placed before ``BaseInstrumentor``.

``class PikaInstrumentor(MessagingInstrumentor, BaseInstrumentor)`` gets from it:

* ``instrumentation_dependencies()`` (the plugin's ``_instruments``);
* ``instrument(**options)`` called again while instrumented (as under ``opentelemetry-instrument``
  and then the service's own call): the new options replace the live ones, logged at INFO, and
  nothing is patched twice;
* ``_instrument()``: the keywords are validated first (a mistake in code raises); past that
  nothing raises, since an entry point that raises would stop ``opentelemetry-instrument`` from
  loading every other instrumentor: the contrib instrumentor of the same library is kept off
  (:class:`~otel_messaging_core.conflicts.ContribGuard`, made from the plugin's names when it
  sets ``_contrib_twin``), the patches are installed and the global instrumentation set; a
  failure is logged, undone, and the library left as it was;
* ``_uninstrument()``: the global instrumentation goes, the patches too unless per-channel
  (or per-connection) instrumentation still needs them, and the contrib instrumentor may
  instrument again.

The plugin says what differs: its patch list (:class:`ClassPatches`, ``_patches``: installed
all or none, removed from the same list) and its :class:`~otel_messaging_core.Scopes` registry
(``_scopes``), which holds the global telemetry and the objects ``instrument_channel()`` /
``instrument_connection()`` pin (:meth:`_pin`, :meth:`_unpin`). The core does not depend on
``opentelemetry-instrumentation`` nor on ``wrapt``: ``BaseInstrumentor`` comes from the plugin's
side of the class statement, reached through ``super()``, and the plugin hands
:class:`ClassPatches` its wrap and unwrap functions.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Collection, Iterable, Mapping, Sequence

from otel_messaging_core.conflicts import ContribGuard
from otel_messaging_core.guard import capture_internal_exceptions
from otel_messaging_core.options import (
    InstrumentationOptions,
    PluginOption,
    has_options,
    log_reconfigured,
)
from otel_messaging_core.telemetry import MessagingTelemetry

if TYPE_CHECKING:
    from otel_messaging_core.scope import Scopes

__all__ = ["ClassPatches", "MessagingInstrumentor", "Patch"]

#: one class patch: (owner, attribute, wrapt wrapper ``(wrapped, instance, args, kwargs)``)
Patch = tuple[Any, str, Callable[..., Any]]


class ClassPatches:
    """A plugin's patches: one list drives both wrap and unwrap, installed all or none.

    ``targets()`` gives the patches (it imports the library, so it is called only at install);
    ``wrap`` is ``wrapt.wrap_function_wrapper`` and ``unwrap``
    ``opentelemetry.instrumentation.utils.unwrap`` (on the plugin's side of the dependencies).
    """

    __slots__ = ("_installed", "_targets", "_unwrap", "_wrap")

    def __init__(
        self,
        targets: Callable[[], Iterable[Patch]],
        *,
        wrap: Callable[[Any, str, Callable[..., Any]], Any],
        unwrap: Callable[[Any, str], Any],
    ) -> None:
        self._targets = targets
        self._wrap = wrap
        self._unwrap = unwrap
        self._installed: list[tuple[Any, str]] = []

    @property
    def installed(self) -> bool:
        """True while the patches are in place."""
        return bool(self._installed)

    def install(self) -> None:
        """Install every patch, or none (a failure takes back those made, then raises); nothing
        when they are installed."""
        if self._installed:
            return
        try:
            for owner, name, wrapper in self._targets():
                self._wrap(owner, name, wrapper)
                self._installed.append((owner, name))
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Remove every patch installed, the last first."""
        while self._installed:
            owner, name = self._installed.pop()
            self._unwrap(owner, name)


class MessagingInstrumentor:
    """The shared ``BaseInstrumentor`` lifecycle (see the module docstring).

    A subclass sets the class attributes (``_patches`` and ``_scopes`` among them); it extends
    :meth:`_install` / :meth:`_remove` only for what its patches leave behind.
    """

    #: the instrumentation scope, logger and entry point name (``otel_pika``)
    _instrumentation_name: ClassVar[str]
    #: the instrumented library as a user knows it and as opentelemetry-python-contrib names its
    #: instrumentation of it (``pika``, ``aio-pika``), for the log lines and ``_contrib``
    _library: ClassVar[str]
    #: the plugin's version, given to the tracer and the meter
    _version: ClassVar[str]
    #: the ``instruments`` requirement ``instrumentation_dependencies()`` returns
    _instruments: ClassVar[Collection[str]]
    #: True when opentelemetry-python-contrib instruments the same library with an instrumentor of
    #: the same class name (``opentelemetry-instrumentation-<_library>``): it is kept off while this
    #: one is instrumented, by the ``_contrib`` made from these names
    _contrib_twin: ClassVar[bool] = False
    #: the guard of the contrib instrumentor (``None``: there is none)
    _contrib: ClassVar[ContribGuard | None] = None
    #: keywords of the plugin's own, on top of the shared ones
    _plugin_options: ClassVar[Sequence[PluginOption]] = ()
    #: the plugin's patches, installed while anything (global or pinned) is instrumented
    _patches: ClassVar[ClassPatches]
    #: the plugin's registry: the global telemetry and the pinned objects
    _scopes: ClassVar[Scopes[Any]]
    #: the guard of ``instrument()`` and of per-channel instrumentation: ``"<name> instrument()"``
    _guard: ClassVar[capture_internal_exceptions]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("_instrumentation_name")
        if name is not None:
            cls._guard = capture_internal_exceptions(f"{name} instrument()")
        if cls.__dict__.get("_contrib_twin"):
            ours = cls._instrumentation_name.replace("_", "-")  # the distribution: otel-pika
            cls._contrib = ContribGuard.of_library(cls._library, cls.__name__, ours=ours)

    # what a plugin may change ----------------------------------------------------------------

    @classmethod
    def _install(cls) -> None:
        """Install every patch (doing nothing when they are installed)."""
        cls._patches.install()

    @classmethod
    def _remove(cls) -> None:
        """Remove every patch (doing nothing when none is installed)."""
        cls._patches.remove()

    @classmethod
    def _swap_global(cls, made: Any) -> InstrumentationOptions | None:
        """Make ``made`` (from :meth:`_make`, or ``None``) the global telemetry; return the
        options of the one it replaces (``None`` when there was none)."""
        old = cls._scopes.swap_global(made)
        return old.options if old is not None else None

    @classmethod
    def _needed_by_channels(cls) -> bool:
        """True while pinned objects rely on the global patches."""
        return bool(cls._scopes.pinned)

    @classmethod
    def _options(cls, kwargs: Mapping[str, Any]) -> InstrumentationOptions:
        """Validate the keywords (strict in code, lenient in the environment)."""
        return InstrumentationOptions.from_kwargs(kwargs, plugin_options=cls._plugin_options)

    @classmethod
    def _make(cls, options: InstrumentationOptions) -> MessagingTelemetry:
        """The telemetry the wrappers use for these options."""
        return MessagingTelemetry(
            options, instrumentation_name=cls._instrumentation_name, version=cls._version
        )

    @classmethod
    def _instrument_scope(cls, bind: Callable[[Any], None], kwargs: Mapping[str, Any]) -> None:
        """``instrument_channel()`` / ``instrument_connection()``: validate the keywords (a mistake
        in code raises), then ``bind(what _make gives)`` to the one object, under the guard."""
        options = cls._options(kwargs)
        with cls._guard:
            bind(cls._make(options))

    @classmethod
    def _pin(cls, obj: Any, kwargs: Mapping[str, Any]) -> None:
        """``instrument_channel()`` / ``instrument_connection()`` by the class patches: validate
        the keywords (a mistake in code raises), install the patches and pin a telemetry to
        ``obj``, under the guard."""

        def pin(telemetry: MessagingTelemetry) -> None:
            cls._install()
            cls._scopes.pin(obj, telemetry)

        cls._instrument_scope(pin, kwargs)

    @classmethod
    def _unpin(cls, obj: Any) -> None:
        """Undo :meth:`_pin`; the patches go when nothing else needs them."""
        cls._scopes.unpin(obj)
        if cls._scopes.global_ is None and not cls._needed_by_channels():
            cls._remove()

    # the BaseInstrumentor lifecycle ----------------------------------------------------------

    def instrumentation_dependencies(self) -> Collection[str]:
        return self._instruments

    def instrument(self, **kwargs: Any) -> Any:
        """Instrument the library (see the plugin's module documentation). Called again with
        options while instrumented (as under ``opentelemetry-instrument``), it applies them and
        says what changed (INFO)."""
        if getattr(self, "is_instrumented_by_opentelemetry", False) and has_options(kwargs):
            options = self._options(kwargs)  # a mistake in code raises
            with self._guard:
                old = self._swap_global(self._make(options))
                log_reconfigured(self._instrumentation_name, old, options)
            return None
        return super().instrument(**kwargs)  # type: ignore[misc]

    def _instrument(self, **kwargs: Any) -> None:
        # Keywords are checked before anything is patched: a mistake in code raises. Past that,
        # nothing raises: an entry point that raises would stop opentelemetry-instrument from
        # loading every other instrumentor.
        options = self._options(kwargs)
        with self._guard:
            made = self._make(options)
            if self._contrib is not None:
                self._contrib.engage()
            self._install()
            self._swap_global(made)
            return
        # reached only when the block above failed (logged): leave the library as it was
        with self._guard:
            self._uninstrument()
        logging.getLogger(self._instrumentation_name).error(
            "%s: %s is not traced: instrument() failed (see the warning above)",
            self._instrumentation_name,
            self._library,
        )

    def _uninstrument(self, **kwargs: Any) -> None:
        self._swap_global(None)
        if not self._needed_by_channels():
            self._remove()
        if self._contrib is not None:
            self._contrib.release()
