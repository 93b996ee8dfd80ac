"""Scopes: which telemetry serves a library object (global, pinned, none), cached on the object
and looked up again after every change; PlainMethods: the library's function under our wrapper."""

from __future__ import annotations

import gc
from typing import Any

import wrapt

from otel_messaging_core import (
    InstrumentationOptions,
    MessagingTelemetry,
    PlainMethods,
    Scope,
    Scopes,
    Shadows,
)


def _telemetry() -> MessagingTelemetry:
    return MessagingTelemetry(
        InstrumentationOptions.from_kwargs({}), instrumentation_name="otel_fake", version="0"
    )


class Channel:
    """A library object that takes attributes."""

    host = "broker.example"


class Slotted:
    """A library object that takes no attributes (``__slots__`` without ``__dict__``)."""

    __slots__ = ("__weakref__",)


class ServerScope(Scope):
    """A plugin's scope that knows the server and counts its lookups."""

    __slots__ = ()
    made = 0

    def __init__(self, obj: Any) -> None:
        super().__init__(obj)
        ServerScope.made += 1

    def server(self, obj: Any) -> tuple[str | None, int | None]:
        return getattr(obj, "host", None), 5672


def test_nothing_instrumented_means_no_scope() -> None:
    """An object of a library that is not instrumented passes through: no scope."""
    scopes = Scopes("fake", Scope)
    assert scopes.of(Channel()) is None
    assert scopes.of(None) is None


def test_global_telemetry_serves_every_object() -> None:
    """After swap_global, every object is served by the global telemetry, with its server's
    destination cache; the scope is cached on the object under the plugin's one attribute."""
    scopes = Scopes("fake", ServerScope)
    telemetry = _telemetry()
    assert scopes.swap_global(telemetry) is None
    channel = Channel()
    scope = scopes.of(channel)
    assert scope is not None
    assert scope.telemetry is telemetry
    assert scope.destinations is telemetry.destinations("broker.example", 5672)
    assert channel.__dict__["_otel_fake_scope"] is scope
    assert scopes.of(channel) is scope
    assert scopes.swap_global(None) is telemetry
    assert scopes.of(channel) is None


def test_pin_overrides_global_and_unpin_restores_it() -> None:
    """A pinned object is served by its own telemetry whatever the global one is; unpinned, by
    the global one again; other objects never see the pinned telemetry."""
    scopes = Scopes("fake", Scope)
    global_, own = _telemetry(), _telemetry()
    scopes.swap_global(global_)
    pinned, other = Channel(), Channel()
    scopes.pin(pinned, own)
    assert scopes.of(pinned).telemetry is own  # type: ignore[union-attr]
    assert scopes.of(other).telemetry is global_  # type: ignore[union-attr]
    assert scopes.live == {global_, own}
    scopes.swap_global(None)
    assert scopes.of(pinned).telemetry is own  # type: ignore[union-attr]
    assert scopes.of(other) is None
    scopes.unpin(pinned)
    assert scopes.of(pinned) is None
    assert not scopes.pinned
    assert not scopes.active


def test_every_change_bumps_the_generation_and_tells_listeners() -> None:
    """pin, unpin and swap_global each invalidate cached scopes and call the listeners; a lookup
    with nothing changed reuses the cached scope object."""
    scopes = Scopes("fake", Scope)
    calls: list[int] = []
    scopes.listeners.append(lambda: calls.append(scopes.generation))
    channel = Channel()
    scopes.swap_global(_telemetry())
    first = scopes.of(channel)
    scopes.pin(channel, _telemetry())
    second = scopes.of(channel)
    assert second is first  # updated in place: what the plugin keeps on it survives
    scopes.unpin(channel)
    assert calls == [1, 2, 3]
    assert first is not None
    assert scopes.of(channel) is first
    assert first.generation == scopes.generation


def test_pinned_objects_are_held_weakly() -> None:
    """Pinning does not keep a library object alive."""
    scopes = Scopes("fake", Scope)
    channel = Channel()
    scopes.pin(channel, _telemetry())
    del channel
    gc.collect()
    assert not scopes.pinned


def test_object_without_attributes_is_resolved_on_every_call() -> None:
    """An object that takes no attributes still gets the right telemetry (pinned or global),
    looked up on every call instead of cached."""
    scopes = Scopes("fake", ServerScope)
    global_, own = _telemetry(), _telemetry()
    scopes.swap_global(global_)
    slotted = Slotted()
    before = ServerScope.made
    assert scopes.of(slotted).telemetry is global_  # type: ignore[union-attr]
    assert scopes.of(slotted).telemetry is global_  # type: ignore[union-attr]
    assert ServerScope.made == before + 2
    scopes.pin(slotted, own)
    assert scopes.of(slotted).telemetry is own  # type: ignore[union-attr]


def test_owner_of_resolves_through_the_pinned_owner() -> None:
    """An object that is not pinned itself is served by the telemetry pinned to its owner."""
    owner, part = Channel(), Channel()
    scopes = Scopes("fake", Scope, owner_of=lambda obj: owner if obj is part else None)
    own = _telemetry()
    scopes.pin(owner, own)
    assert scopes.of(part).telemetry is own  # type: ignore[union-attr]
    assert scopes.of(Channel()) is None


def test_a_failing_lookup_is_logged_and_passes_through(caplog: Any) -> None:
    """A scope that cannot be built (a bug of ours) never raises into the caller."""

    class Broken(Scope):
        __slots__ = ()

        def server(self, obj: Any) -> tuple[str | None, int | None]:
            raise RuntimeError("bug")

    scopes = Scopes("fake", Broken)
    scopes.swap_global(_telemetry())
    assert scopes.of(Channel()) is None
    assert "fake scope" in caplog.text


class Library:
    """A library class with a method our wrapper wraps."""

    def send(self) -> str:
        return "sent"


def _ours(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    return "traced"


def test_plain_methods_finds_the_function_under_our_wrapper() -> None:
    """Under our wrapt wrapper, the library's own function; a subclass inherits the answer; not
    wrapped (or wrapped by someone else) there is nothing to skip; answers are cached per class
    until clear()."""
    plain = PlainMethods("send", _ours)
    original = Library.__dict__["send"]
    assert plain.of(Library) is None
    plain.clear()
    wrapt.wrap_function_wrapper(Library, "send", _ours)
    try:

        class Sub(Library):
            pass

        assert plain.of(Library) is original
        assert plain.of(Sub) is original
        assert PlainMethods("send", ("tests.elsewhere",)).of(Library) is None
        assert PlainMethods("send", (__name__,)).of(Library) is original
        assert PlainMethods("send", lambda *a: None).of(Library) is None
    finally:
        Library.send = original  # type: ignore[method-assign]
    assert plain.of(Library) is original  # cached until clear()
    plain.clear()
    assert plain.of(Library) is None


def test_shadows_are_bound_on_the_object_and_taken_back() -> None:
    """A shadow answers for its object alone (bound to the object, or to what it is given);
    forget() takes back every shadow still in place, leaves one the user replaced since, and
    clears the PlainMethods the shadows came from."""
    plain = PlainMethods("send", _ours)
    shadows = Shadows(plain)
    one, other, replaced = Library(), Library(), Library()

    def shadow(target: Any) -> str:
        return f"shadow of {type(target).__name__}"

    shadows.bind(one, "send", shadow)
    shadows.bind(replaced, "send", shadow, to=other)
    assert (one.send(), other.send(), replaced.send()) == (
        "shadow of Library",
        "sent",
        "shadow of Library",
    )
    replaced.__dict__["send"] = lambda: "the user's"
    original = Library.__dict__["send"]
    wrapt.wrap_function_wrapper(Library, "send", _ours)
    try:
        assert plain.of(Library) is original
    finally:
        Library.send = original  # type: ignore[method-assign]
    shadows.forget()
    assert "send" not in one.__dict__
    assert one.send() == "sent"
    assert replaced.send() == "the user's"
    assert plain.cached(Library) is None  # cleared with the shadows
    shadows.forget()  # nothing held any more: nothing to do
