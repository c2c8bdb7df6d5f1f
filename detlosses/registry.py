"""A name -> class registry, so components can be built from config dicts.

Usage::

    LOSSES = Registry("losses")

    @LOSSES.register()
    class GIoULoss(nn.Module): ...

    LOSSES.build({"type": "GIoULoss", "loss_weight": 2.0})
    LOSSES.build("GIoULoss")              # a bare name means default arguments

Third-party packages plug in through the entry-point group ``detlosses.plugins``:
each entry point names a module that registers its components when imported. Plugins
are imported once, on the first lookup in any registry.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["PLUGIN_GROUP", "Registry"]

PLUGIN_GROUP = "detlosses.plugins"
_plugins_loaded = False


_BUILTIN_MODULES = ("detlosses.losses", "detlosses.assigners", "detlosses.nms")


def _load_plugins() -> None:
    """Import the built-in components (``import detlosses`` is lazy), then every module
    advertised under the ``detlosses.plugins`` entry-point group."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    for entry_point in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        try:
            entry_point.load()
        except Exception as exc:  # a broken plugin must not take the toolkit down
            warnings.warn(
                f"detlosses plugin {entry_point.name!r} ({entry_point.value}) failed to "
                f"import and was skipped: {type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=3,
            )


class Registry:
    """Maps names to classes (or factory functions) and builds them from configs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str | Callable[..., Any] | None = None, obj: Callable[..., Any] | None = None):
        """Register ``obj`` under ``name`` (default: its ``__name__``).

        ``@REG.register()``, ``@REG.register("Name")`` and ``@REG.register`` decorate;
        ``REG.register("Name", obj)`` registers directly. A taken name raises KeyError.
        """
        if callable(name):  # used bare: @REG.register
            return self._add(name.__name__, name)
        if obj is not None:
            return self._add(name or obj.__name__, obj)
        return lambda target: self._add(name or target.__name__, target)

    def _add(self, name: str, obj: Callable[..., Any]) -> Callable[..., Any]:
        if name in self._entries:
            raise KeyError(f"{name!r} is already registered in {self.name}: {self._entries[name]!r}")
        self._entries[name] = obj
        return obj

    def get(self, name: str) -> Callable[..., Any]:
        """The class registered as ``name``; KeyError with close matches otherwise."""
        _load_plugins()
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise KeyError(f"{name!r} is not registered in {self.name}{hint} (registered: {', '.join(self.names())})")
        return self._entries[name]

    def build(self, cfg: str | Mapping[str, Any] | Any, **defaults: Any) -> Any:
        """Build from ``{"type": NAME, **kwargs}`` or a bare ``NAME``; a built object is returned as is.

        ``defaults`` are keyword arguments the config may override (for example
        ``num_classes`` passed down by a composite component).
        """
        if isinstance(cfg, str):
            cfg = {"type": cfg}
        elif not isinstance(cfg, Mapping):
            return cfg
        if "type" not in cfg:
            raise KeyError(f"a {self.name} config needs a 'type' key naming the component, got {dict(cfg)!r}")
        kwargs = {**defaults, **{k: v for k, v in cfg.items() if k != "type"}}
        cls = self.get(cfg["type"])
        _check_kwargs(cls, cfg["type"], kwargs, explicit=set(cfg) - {"type"})
        return cls(**kwargs)

    def names(self) -> list[str]:
        """Sorted registered names."""
        _load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        _load_plugins()
        return name in self._entries

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.name!r}, names={self.names()})"


def _check_kwargs(cls: Callable[..., Any], name: str, kwargs: dict[str, Any], explicit: set[str]) -> None:
    """Raise TypeError naming the component and argument the constructor does not take.

    Defaults passed by a composite that the component does not accept are dropped silently
    (they are offers, not requests); only arguments the user wrote are errors.
    """
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in list(kwargs):
        if key in params:
            continue
        if key not in explicit:
            del kwargs[key]
            continue
        close = difflib.get_close_matches(key, params, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"{name} got an unexpected argument {key!r}{hint} (accepted: {', '.join(params)})")


LOSSES = Registry("losses")
ASSIGNERS = Registry("assigners")
NMS = Registry("nms")
