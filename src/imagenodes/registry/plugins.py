"""Plugin discovery and registration, with per-pack isolation.

Modelled on tox 4's manager and datasette's plugins.py: every pack (ours included) is
an entry point in the ``imagenodes`` group.  Loading is isolated per pack: a pack that
fails to import, has a misspelled hook (``check_pending``), raises while registering,
or registers a node id another pack already owns is recorded as *unavailable* with
the reason, and the rest of the catalog keeps working.  ``IMAGENODES_DISABLE_PLUGINS``
blocks packs by entry-point or distribution name before they are imported.
"""

from __future__ import annotations

import importlib.metadata
import os
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from imagenodes.errors import PluginError
from imagenodes.registry import hookspecs
from imagenodes.sdk import Node

ENTRY_POINT_GROUP = "imagenodes"
DISABLE_ENV = "IMAGENODES_DISABLE_PLUGINS"
OWN_DISTRIBUTION = "imagenodes"


@dataclass
class PluginPack:
    """One plugin pack (an entry point of a distribution) as the catalog reports it."""

    name: str
    distribution: str | None
    version: str | None
    status: str = "available"  # available | unavailable | disabled
    reason: str | None = None
    nodes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "reason": self.reason,
            "nodes": list(self.nodes),
        }


@dataclass
class Registrations:
    """What all plugin packs registered, with the provider of each item."""

    nodes: dict[str, type[Node[Any, Any]]] = field(default_factory=dict)
    node_providers: dict[str, str] = field(default_factory=dict)
    connection_types: dict[str, type] = field(default_factory=dict)
    profiles: dict[str, Any] = field(default_factory=dict)
    profile_providers: dict[str, str] = field(default_factory=dict)
    plugin_packs: dict[str, PluginPack] = field(default_factory=dict)


def disabled_names(env: dict[str, str] | None = None) -> set[str]:
    raw = (env if env is not None else os.environ).get(DISABLE_ENV, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    eps = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))

    # Our own packs first, then by distribution: the first provider of an id keeps it,
    # so the order must not depend on site-packages iteration order.
    def key(ep: importlib.metadata.EntryPoint) -> tuple[int, str, str]:
        dist = ep.dist.name if ep.dist else ""
        return (0 if dist == OWN_DISTRIBUTION else 1, dist, ep.name)

    seen: set[tuple[str, str]] = set()
    out = []
    for ep in sorted(eps, key=key):
        ident = (ep.name, ep.value)
        if ident not in seen:  # editable + regular installs can list one ep twice
            seen.add(ident)
            out.append(ep)
    return out


def _short_reason(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" ({last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


class PluginLoader:
    """Owns the pluggy PluginManager and builds the :class:`Registrations` from it."""

    def __init__(
        self,
        *,
        load_entrypoints: bool = True,
        plugins: Iterable[Any] = (),
        disabled: set[str] | None = None,
    ) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.registry = Registrations()
        self.disabled = disabled if disabled is not None else disabled_names()
        if load_entrypoints:
            for ep in _entry_points():
                self._load_entry_point(ep)
        for index, plugin in enumerate(plugins):
            name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{index}"
            self._add_plugin(plugin, name=name, distribution=None, version=None)

    # -- loading --------------------------------------------------------------------
    def _load_entry_point(self, ep: importlib.metadata.EntryPoint) -> None:
        dist = ep.dist.name if ep.dist else None
        version = ep.dist.version if ep.dist else None
        if ep.name in self.disabled or (dist and dist in self.disabled):
            self.registry.plugin_packs[ep.name] = PluginPack(
                ep.name, dist, version, "disabled", f"blocked by {DISABLE_ENV}"
            )
            return
        try:
            plugin = ep.load()
        except Exception as exc:  # any import failure must not take the host down
            self.registry.plugin_packs[ep.name] = PluginPack(
                ep.name, dist, version, "unavailable", f"failed to import: {_short_reason(exc)}"
            )
            return
        self._add_plugin(plugin, name=ep.name, distribution=dist, version=version)

    def _add_plugin(
        self, plugin: Any, *, name: str, distribution: str | None, version: str | None
    ) -> None:
        info = PluginPack(name, distribution, version)
        self.registry.plugin_packs[name] = info
        if self.pm.is_registered(plugin):
            info.status, info.reason = "unavailable", "already registered under another name"
            return
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # pluggy validation errors: bad signatures, etc.
            info.status, info.reason = "unavailable", f"invalid hooks: {exc}"
            return
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(plugin)
            info.status, info.reason = "unavailable", f"unknown hook: {exc}"
            return
        try:
            self._collect(plugin, name, info)
        except Exception as exc:
            self.pm.unregister(plugin)
            info.status, info.reason = "unavailable", _short_reason(exc)

    def _collect(self, plugin: Any, name: str, info: PluginPack) -> None:
        """Run this one plugin's register hooks, staging results until all succeed."""
        nodes: dict[str, type[Node[Any, Any]]] = {}
        conn_types: dict[str, type] = {}
        profiles: dict[str, Any] = {}

        def impls(hook: Any) -> list[Callable[..., Any]]:
            return [impl.function for impl in hook.get_hookimpls() if impl.plugin is plugin]

        def register_node(cls: type) -> None:
            if not (isinstance(cls, type) and issubclass(cls, Node)):
                raise PluginError(f"{cls!r} is not a Node subclass", details={"pack": name})
            problems = cls.contract_problems()
            if problems:
                raise PluginError(f"node {cls.__name__}: " + "; ".join(problems))
            owner = self.registry.node_providers.get(cls.id) or (name if cls.id in nodes else None)
            if owner is not None:
                raise PluginError(
                    f"duplicate node id {cls.id!r}: provided by pack {owner!r} and by pack "
                    f"{name!r}; the second registration is refused",
                    details={"node": cls.id, "providers": [owner, name]},
                )
            nodes[cls.id] = cls

        def register_connection_type(cls: type) -> None:
            type_name = getattr(cls, "type_name", None)
            if not type_name:
                raise PluginError(f"connection type {cls!r} has no type_name")
            if type_name in self.registry.connection_types or type_name in conn_types:
                raise PluginError(f"duplicate connection type {type_name!r} (pack {name!r})")
            conn_types[type_name] = cls

        def register_profile(profile: Any) -> None:
            pname = profile.name
            owner = self.registry.profile_providers.get(pname) or (
                name if pname in profiles else None
            )
            if owner is not None:
                raise PluginError(
                    f"duplicate model profile {pname!r}: provided by pack {owner!r} and by "
                    f"pack {name!r}"
                )
            profiles[pname] = profile

        for fn in impls(self.pm.hook.register_nodes):
            fn(register=register_node)
        for fn in impls(self.pm.hook.register_connection_types):
            fn(register=register_connection_type)
        for fn in impls(self.pm.hook.register_model_profiles):
            fn(register=register_profile)

        reg = self.registry
        reg.nodes.update(nodes)
        reg.node_providers.update(dict.fromkeys(nodes, name))
        reg.connection_types.update(conn_types)
        reg.profiles.update(profiles)
        reg.profile_providers.update(dict.fromkeys(profiles, name))
        info.nodes = sorted(nodes)
