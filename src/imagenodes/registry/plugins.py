"""Plugin discovery and registration, with per-pack isolation, through pluggy's calls.

Modelled on tox 4's manager and datasette's plugins.py: every pack (ours included) is
an entry point in the ``imagenodes`` group.  Loading is isolated per pack: a pack that
fails to import, has a misspelled hook (``check_pending``), raises while registering,
or registers a node id another pack already owns is recorded as *unavailable* with
the reason, and the rest of the catalog keeps working.  ``IMAGENODES_DISABLE_PLUGINS``
blocks packs by entry-point or distribution name before they are imported.

Isolation needs one call per pack (one pack raising must not stop the others), yet
every call goes through pluggy's own hook-calling path, never a bare function call:
``pm.subset_hook_caller(hook, remove_plugins=<the other packs>)`` is a real
:class:`pluggy.HookCaller` over one pack's implementations plus every plugin's
*wrappers*.  So ``pm.add_hookcall_monitoring``, ``pm.enable_tracing``, hook wrappers
(``@hookimpl(wrapper=True)``, which wrap each pack's call) and ``tryfirst`` /
``trylast`` all behave as pluggy documents: the packs are called in the order pluggy
would call their implementations.  Pluggy calls the implementation registered last
first, so packs are registered in reverse of the discovery order (ours first, then
by distribution, then ``plugins=``), and without markers the call order *is* the
discovery order.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pluggy

from imagenodes.errors import PluginError
from imagenodes.registry import hookspecs
from imagenodes.sdk import Node

#: Packs: nodes, connection types, model families (and commands). Host() loads it.
ENTRY_POINT_GROUP = "imagenodes"
#: Modules that only add sub-commands to the ``imagenodes`` command: only the command
#: loads this group, so a ``Host()`` never imports a command module (``serve``'s pulls
#: FastAPI) nor reports one as a pack.  The built-in flows, library, MCP and server
#: commands are entry points here; a pack may use it for a heavy command module too.
COMMANDS_GROUP = "imagenodes.commands"
DISABLE_ENV = "IMAGENODES_DISABLE_PLUGINS"
OWN_DISTRIBUTION = "imagenodes"

#: The hooks that build the registry, in the order they are called (each for every
#: pack before the next one).
REGISTRATION_HOOKS = ("register_nodes", "register_connection_types", "register_model_profiles")

log = logging.getLogger(__name__)


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


@dataclass
class _Loaded:
    """A pack's plugin object and its catalog record, while loading."""

    plugin: Any
    info: PluginPack


@dataclass
class _Staged:
    """What one pack registered, kept apart until all its hooks have succeeded."""

    nodes: dict[str, type[Node[Any, Any]]] = field(default_factory=dict)
    connection_types: dict[str, type] = field(default_factory=dict)
    profiles: dict[str, Any] = field(default_factory=dict)


def disabled_names(env: dict[str, str] | None = None) -> set[str]:
    raw = (env if env is not None else os.environ).get(DISABLE_ENV, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def new_plugin_manager() -> pluggy.PluginManager:
    """A plugin manager with imagenodes' hook specifications and nothing registered.

    Pass one to ``Host(plugin_manager=pm)`` (or :class:`PluginLoader`) to observe the
    loading: ``pm.add_hookcall_monitoring(before, after)``, or
    ``pm.trace.root.setwriter(print)`` then ``pm.enable_tracing()``.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return pm


def _entry_points(groups: Sequence[str]) -> list[importlib.metadata.EntryPoint]:
    eps = [ep for group in groups for ep in importlib.metadata.entry_points(group=group)]

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


def _is_wrapper(impl: pluggy.HookImpl) -> bool:
    return bool(impl.wrapper or impl.hookwrapper)


class PluginLoader:
    """Owns the pluggy PluginManager and builds the :class:`Registrations` from it.

    Args:
        load_entrypoints: discover packs through the entry-point ``groups``.
        plugins: plugin objects added after the entry points (tests, embedding).
        disabled: entry-point or distribution names not to import (default: the
            ``IMAGENODES_DISABLE_PLUGINS`` list).
        plugin_manager: the manager to register into, e.g. one with hook-call
            monitoring attached (default: :func:`new_plugin_manager`); plugins
            already registered in it count as observers, not packs: their wrappers
            wrap every pack's calls, their plain implementations are not called.
        groups: the entry-point groups to load (the command adds
            :data:`COMMANDS_GROUP`).
        registrations: call the ``register_*`` hooks that build the registry; the
            command, which only needs ``register_commands``, skips them.
    """

    def __init__(
        self,
        *,
        load_entrypoints: bool = True,
        plugins: Iterable[Any] = (),
        disabled: set[str] | None = None,
        plugin_manager: pluggy.PluginManager | None = None,
        groups: Sequence[str] = (ENTRY_POINT_GROUP,),
        registrations: bool = True,
    ) -> None:
        self.pm = plugin_manager if plugin_manager is not None else new_plugin_manager()
        if not hasattr(self.pm.hook, REGISTRATION_HOOKS[0]):
            self.pm.add_hookspecs(hookspecs)
        self.registry = Registrations()
        self.disabled = disabled if disabled is not None else disabled_names()
        loaded: list[_Loaded] = []
        if load_entrypoints:
            for ep in _entry_points(groups):
                item = self._import(ep)
                if item is not None:
                    loaded.append(item)
        for index, plugin in enumerate(plugins):
            name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{index}"
            loaded.append(_Loaded(plugin, self._record(PluginPack(name, None, None))))
        loaded = self._drop_repeats(loaded)
        # Pluggy calls the implementation registered last first: registering in reverse
        # makes its call order the discovery order.
        registered = [item for item in reversed(loaded) if self._register(item)]
        #: The packs registered in the plugin manager, in discovery order.
        self.packs: list[_Loaded] = registered[::-1]
        if registrations:
            self._register_all()

    # -- loading --------------------------------------------------------------------
    def _record(self, info: PluginPack) -> PluginPack:
        self.registry.plugin_packs[info.name] = info
        return info

    def _import(self, ep: importlib.metadata.EntryPoint) -> _Loaded | None:
        dist = ep.dist.name if ep.dist else None
        version = ep.dist.version if ep.dist else None
        if ep.name in self.disabled or (dist and dist in self.disabled):
            self._record(
                PluginPack(ep.name, dist, version, "disabled", f"blocked by {DISABLE_ENV}")
            )
            return None
        info = self._record(PluginPack(ep.name, dist, version))
        try:
            plugin = ep.load()
        except Exception as exc:  # any import failure must not take the host down
            info.status, info.reason = "unavailable", f"failed to import: {_short_reason(exc)}"
            return None
        return _Loaded(plugin, info)

    def _drop_repeats(self, loaded: list[_Loaded]) -> list[_Loaded]:
        """One plugin object under two names keeps the first (pluggy refuses a second
        registration); one already in a caller's plugin manager is not a pack here."""
        kept: list[_Loaded] = []
        for item in loaded:
            name = item.info.name
            if self.pm.is_registered(item.plugin) or any(k.plugin is item.plugin for k in kept):
                item.info.status = "unavailable"
                item.info.reason = "already registered under another name"
            elif self.pm.has_plugin(name) or any(k.info.name == name for k in kept):
                item.info.status = "unavailable"
                item.info.reason = f"invalid hooks: plugin name already registered: {name!r}"
            else:
                kept.append(item)
        return kept

    def _register(self, item: _Loaded) -> bool:
        info = item.info
        try:
            self.pm.register(item.plugin, name=info.name)
        except Exception as exc:  # pluggy validation errors: bad signatures, etc.
            info.status, info.reason = "unavailable", f"invalid hooks: {exc}"
            return False
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(item.plugin)
            info.status, info.reason = "unavailable", f"unknown hook: {exc}"
            return False
        return True

    def _unavailable(self, item: _Loaded, reason: str) -> None:
        item.info.status, item.info.reason = "unavailable", reason
        self.pm.unregister(item.plugin)
        self.packs = [p for p in self.packs if p is not item]

    # -- calling hooks, one pack at a time ------------------------------------------
    def call_order(self, hook_name: str) -> list[_Loaded]:
        """The packs implementing ``hook_name``, in the order pluggy would call them
        (``tryfirst``/``trylast`` and registration order)."""
        by_plugin = {id(item.plugin): item for item in self.packs}
        order: list[_Loaded] = []
        # get_hookimpls() lists implementations in reverse call order.
        for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
            item = by_plugin.get(id(impl.plugin))
            if item is not None and not _is_wrapper(impl) and item not in order:
                order.append(item)
        return order

    def call_one(self, hook_name: str, item: _Loaded, **kwargs: Any) -> Any:
        """Call ``hook_name`` for one pack through a pluggy hook caller: the pack's own
        implementations, wrapped by every plugin's wrappers of that hook."""
        impls = getattr(self.pm.hook, hook_name).get_hookimpls()
        others = [i.plugin for i in impls if i.plugin is not item.plugin and not _is_wrapper(i)]
        return self.pm.subset_hook_caller(hook_name, remove_plugins=others)(**kwargs)

    def _register_all(self) -> None:
        """Run the registration hooks, each for every pack in call order; a pack's
        registrations reach the registry only if all its hooks succeed."""
        staged = {id(item.plugin): _Staged() for item in self.packs}
        for hook_name in REGISTRATION_HOOKS:
            for item in self.call_order(hook_name):
                register = self._registrar(hook_name, item, staged)
                try:
                    self.call_one(hook_name, item, register=register)
                except Exception as exc:
                    del staged[id(item.plugin)]
                    self._unavailable(item, _short_reason(exc))
        reg = self.registry
        for item in self.packs:
            mine = staged[id(item.plugin)]
            name = item.info.name
            reg.nodes.update(mine.nodes)
            reg.node_providers.update(dict.fromkeys(mine.nodes, name))
            reg.connection_types.update(mine.connection_types)
            reg.profiles.update(mine.profiles)
            reg.profile_providers.update(dict.fromkeys(mine.profiles, name))
            item.info.nodes = sorted(mine.nodes)

    def _registrar(
        self, hook_name: str, item: _Loaded, staged: dict[int, _Staged]
    ) -> Callable[[Any], None]:
        """The ``register`` callable one pack's call of ``hook_name`` receives."""
        name = item.info.name
        mine = staged[id(item.plugin)]

        def owner(kind: str, key: str) -> str | None:
            """The pack that registered ``key`` before (in call order), if any."""
            for other in self.packs:
                other_staged = staged.get(id(other.plugin))
                if other_staged is not None and key in getattr(other_staged, kind):
                    return other.info.name
            return None

        def register_node(cls: type) -> None:
            if not (isinstance(cls, type) and issubclass(cls, Node)):
                raise PluginError(f"{cls!r} is not a Node subclass", details={"pack": name})
            problems = cls.contract_problems()
            if problems:
                raise PluginError(f"node {cls.__name__}: " + "; ".join(problems))
            first = owner("nodes", cls.id)
            if first is not None:
                raise PluginError(
                    f"duplicate node id {cls.id!r}: provided by pack {first!r} and by pack "
                    f"{name!r}; the second registration is refused",
                    details={"node": cls.id, "providers": [first, name]},
                )
            mine.nodes[cls.id] = cls

        def register_connection_type(cls: type) -> None:
            type_name = getattr(cls, "type_name", None)
            if not type_name:
                raise PluginError(f"connection type {cls!r} has no type_name")
            if owner("connection_types", type_name) is not None:
                raise PluginError(f"duplicate connection type {type_name!r} (pack {name!r})")
            mine.connection_types[type_name] = cls

        def register_profile(profile: Any) -> None:
            first = owner("profiles", profile.name)
            if first is not None:
                raise PluginError(
                    f"duplicate model profile {profile.name!r}: provided by pack {first!r} "
                    f"and by pack {name!r}"
                )
            mine.profiles[profile.name] = profile

        registrars: dict[str, Callable[[Any], None]] = {
            "register_nodes": register_node,
            "register_connection_types": register_connection_type,
            "register_model_profiles": register_profile,
        }
        return registrars[hook_name]

    # -- commands -------------------------------------------------------------------
    def register_commands(self, subparsers: Any) -> None:
        """Let every pack add its sub-commands (``register_commands``), one pack at a
        time: a pack that raises (a name already taken, a bug) loses its commands, is
        logged as a warning, and the command keeps every other pack's."""
        for item in self.call_order("register_commands"):
            try:
                self.call_one("register_commands", item, subparsers=subparsers)
            except Exception as exc:
                log.warning(
                    "pack %r could not add its commands: %s", item.info.name, _short_reason(exc)
                )
