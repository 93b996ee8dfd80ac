"""What every plugin's wrapt wrappers have in common."""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["Wrapper"]

#: A ``wrapt.wrap_function_wrapper`` wrapper: ``(wrapped, instance, args, kwargs) -> result``.
Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]
