"""Which telemetry serves a library object: one mechanism for every plugin, on the model of
dd-trace-py's ``Pin``.

A plugin keeps one :class:`Scopes` registry. ``instrument()`` sets its global telemetry
(:meth:`Scopes.swap_global`); ``instrument_channel()`` / ``instrument_connection()`` pin a
telemetry to one object (:meth:`Scopes.pin`), which then serves that object whatever the global
one is. The wrappers ask :meth:`Scopes.of` on every message: the object's :class:`Scope` (its
telemetry and the destination cache of its server), cached on the object under one attribute
(``_otel_<plugin>_scope``) and checked against a generation counter that every change bumps, so
the per-message cost is one attribute read and one compare. An object that takes no attributes
is resolved on every call instead.

:class:`PlainMethods` answers the other per-class question the plugins share: the library's own
function under our wrapt wrapper of a class attribute, for binding on one object so that later
calls skip the wrapper.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from types import MethodType
from typing import Any, Callable, Generic, TypeVar

from otel_messaging_core.attributes import DestinationCache
from otel_messaging_core.guard import capture_internal_exceptions
from otel_messaging_core.telemetry import MessagingTelemetry

__all__ = ["PlainMethods", "Scope", "Scopes", "Shadows"]


class Scope:
    """What the wrappers need about one library object; ``telemetry is None``: pass through.

    A plugin subclasses it for what only its library needs (more ``__slots__``, :meth:`server`,
    :meth:`retarget`); the constructor takes the object the scope is made for.
    """

    __slots__ = ("destinations", "generation", "telemetry")

    def __init__(self, obj: Any) -> None:
        self.telemetry: MessagingTelemetry | None = None
        self.destinations = DestinationCache()
        self.generation = -1

    def server(self, obj: Any) -> tuple[str | None, int | None]:
        """``server.address`` and ``server.port`` of the object's broker (never credentials)."""
        return None, None

    def retarget(self, obj: Any, telemetry: MessagingTelemetry | None) -> None:
        """Serve ``telemetry`` from now on (called only when it differs from the current one)."""
        self.telemetry = telemetry
        if telemetry is not None:
            host, port = self.server(obj)
            self.destinations = telemetry.destinations(host, port)


S = TypeVar("S", bound=Scope)


class Scopes(Generic[S]):
    """One plugin's registry: the global telemetry, the pinned objects, a generation counter."""

    def __init__(
        self,
        plugin: str,
        scope: Callable[[Any], S],
        *,
        owner_of: Callable[[Any], Any] | None = None,
    ) -> None:
        #: the attribute the scope is cached under on a library object
        self.attr = f"_otel_{plugin}_scope"
        self._scope = scope
        # for an object that is not pinned itself: the pinned object it belongs to, if any
        self._owner_of = owner_of
        self._guard = capture_internal_exceptions(f"{plugin} scope")
        #: the telemetry of ``instrument()``; ``None`` when not instrumented
        self.global_: MessagingTelemetry | None = None
        #: objects given their own telemetry (``instrument_channel()`` / ``instrument_connection()``)
        self.pinned: weakref.WeakKeyDictionary[Any, MessagingTelemetry] = (
            weakref.WeakKeyDictionary()
        )
        #: bumped on every change: a cached scope of another generation is looked up again
        self.generation = 0
        #: every telemetry in use (global or pinned)
        self.live: frozenset[MessagingTelemetry] = frozenset()
        #: called after every change
        self.listeners: list[Callable[[], None]] = []

    # -- changes ------------------------------------------------------------------------------

    def changed(self) -> None:
        """Invalidate every cached scope and tell the listeners."""
        self.generation += 1
        live = set(self.pinned.values())
        if self.global_ is not None:
            live.add(self.global_)
        self.live = frozenset(live)
        for listener in self.listeners:
            listener()

    def swap_global(self, telemetry: MessagingTelemetry | None) -> MessagingTelemetry | None:
        """Make ``telemetry`` the global one (``None``: none); return the one it replaces."""
        old, self.global_ = self.global_, telemetry
        self.changed()
        return old

    def pin(self, obj: Any, telemetry: MessagingTelemetry) -> None:
        """``telemetry`` serves ``obj`` (and what resolves through it) from now on."""
        self.pinned[obj] = telemetry
        self.changed()

    def unpin(self, obj: Any) -> None:
        """``obj`` is served by the global telemetry again (or by none)."""
        with contextlib.suppress(TypeError):  # never pinnable, so never pinned
            self.pinned.pop(obj, None)
        self.changed()

    @property
    def active(self) -> bool:
        """True while any telemetry is in use."""
        return bool(self.live)

    # -- lookup -------------------------------------------------------------------------------

    def of(self, obj: Any) -> S | None:
        """The scope serving ``obj``; ``None`` when nothing instruments it (or ``obj`` is None)."""
        scope: S | None = getattr(obj, self.attr, None)
        if scope is not None and scope.generation == self.generation:
            return scope if scope.telemetry is not None else None
        return self.rebind(obj, scope)

    def cached(self, obj: Any) -> S | None:
        """The scope cached on ``obj``, whatever its generation (no lookup)."""
        return getattr(obj, self.attr, None)

    def telemetry_for(self, obj: Any) -> MessagingTelemetry | None:
        """The telemetry pinned to ``obj`` (or to its owner), else the global one."""
        pinned = self.pinned
        if pinned:
            with contextlib.suppress(TypeError):  # not weakly referenceable: never pinned
                own = pinned.get(obj)
                if own is not None:
                    return own
            if self._owner_of is not None:
                owner = self._owner_of(obj)
                if owner is not None:
                    own = pinned.get(owner)
                    if own is not None:
                        return own
        return self.global_

    def rebind(self, obj: Any, scope: S | None = None) -> S | None:
        """Look the scope of ``obj`` up anew (see :meth:`of`); a failure is logged: ``None``."""
        if obj is None:
            return None
        with self._guard:
            telemetry = self.telemetry_for(obj)
            if scope is None:
                scope = self._scope(obj)
                # an object that takes no attributes is resolved on every call instead
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(obj, self.attr, scope)
            if telemetry is not scope.telemetry:
                scope.retarget(obj, telemetry)
            scope.generation = self.generation
            return scope if telemetry is not None else None
        return None


class PlainMethods:
    """Per class: the function our wrapt wrapper of the class attribute ``name`` wraps.

    ``ours`` names our wrapper: the wrapper function itself, or the modules our wrappers are
    defined in. :meth:`of` answers ``None`` when the class attribute (looked up statically, through
    the MRO) is not our wrapper: not instrumented, or another library's wrapper above ours, which
    must not be skipped. Answers are cached per class until :meth:`clear`.
    """

    __slots__ = ("_found", "_ours", "cached", "name")

    def __init__(self, name: str, ours: Callable[..., Any] | tuple[str, ...]) -> None:
        self.name = name
        self._ours = ours
        self._found: dict[type, Any] = {}
        #: the answer already found for a class (``None`` also when not looked up yet): one dict
        #: read, for per-message paths that only run after :meth:`of` answered for the class
        self.cached: Callable[[type], Any] = self._found.get

    def _is_ours(self, wrapper: Any) -> bool:
        ours = self._ours
        if isinstance(ours, tuple):
            return wrapper is not None and getattr(wrapper, "__module__", None) in ours
        return wrapper is ours

    def of(self, kind: type) -> Any:
        """The plain function under our wrapper of ``kind.<name>``, or ``None``."""
        found = self._found.get(kind, self)
        if found is self:
            attribute = inspect.getattr_static(kind, self.name, None)
            found = None
            if self._is_ours(getattr(attribute, "_self_wrapper", None)):
                found = attribute.__wrapped__
            self._found[kind] = found
        return found

    def clear(self) -> None:
        """Instrumentation changed: look every class up again."""
        self._found.clear()


class Shadows:
    """Functions bound on library objects over a class-level wrapper, so the next calls on that
    object skip its dispatch, and taken back whenever instrumentation changes.

    :meth:`bind` puts ``function`` bound to ``to`` (the object itself unless given) into
    ``obj.__dict__[name]`` and remembers it weakly; :meth:`forget` deletes every one still in
    place (one the library or the user replaced since stays as it is) and clears ``plains``, the
    :class:`PlainMethods` the shadows were made from.
    """

    __slots__ = ("_held", "plains")

    def __init__(self, *plains: PlainMethods) -> None:
        self._held: weakref.WeakKeyDictionary[Any, dict[str, Callable[..., Any]]] = (
            weakref.WeakKeyDictionary()
        )
        self.plains: list[PlainMethods] = list(plains)

    def bind(self, obj: Any, name: str, function: Callable[..., Any], to: Any = None) -> None:
        """Shadow ``obj.<name>`` with ``function`` bound to ``to`` (default: ``obj``)."""
        obj.__dict__[name] = MethodType(function, obj if to is None else to)
        self._held.setdefault(obj, {})[name] = function

    def forget(self) -> None:
        """Take every shadow back: the objects go through their classes' attributes again."""
        for obj, names in list(self._held.items()):
            state = obj.__dict__
            for name, function in names.items():
                bound = state.get(name)
                if type(bound) is MethodType and bound.__func__ is function:
                    del state[name]
        self._held.clear()
        for plain in self.plains:
            plain.clear()
