"""A quiet library: third-party output goes through :mod:`logging`, never straight to
stderr.

imagenodes runs inside other applications (a builder's backend, an MCP client's
subprocess, a notebook), whose stderr is theirs.  The ML stack does not behave like a
library there: transformers and diffusers each install a stderr handler of their own
on their root logger and stop propagation (so an application's logging configuration
cannot reach their messages), huggingface_hub does the same at import, and all of them
emit :mod:`warnings` (diffusers' ``torch_dtype`` FutureWarning) that Python prints to
stderr.  transformers' "``CLIPImageProcessor`` requires torchvision" advisories are
such messages, written by every process that loads a pipeline.

:func:`quiet_libraries` (called once when the engine is imported, and by the
``imagenodes`` command) makes their messages ordinary log records under their own
loggers (``transformers``, ``diffusers``, ``torch``, …):

* the libraries' own stderr handlers are removed and their records propagate, the
  moment each library's logging module loads (a post-import hook: importing them up
  front would cost seconds on paths that never load a model);
* a :class:`logging.NullHandler` on each library's root logger keeps Python's
  last-resort handler from printing them when the application configured nothing;
* a :mod:`warnings` hook sends warnings raised inside those libraries (or blamed on
  the engine's calls into them) to the library's logger; every other warning is left
  to whatever showed it before, and ``-W``/``filterwarnings`` still decide first.

So nothing reaches stderr unless the application turns logging up
(``logging.basicConfig()``, or ``imagenodes -v``), and then everything does, named by
its library.  Our own loggers (``imagenodes.*``) have a NullHandler too (set in the
package root), as the logging HOWTO asks of libraries.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import TextIO

#: Library logging modules that install a stderr handler of their own, and the root
#: logger each installs it on.  transformers and diffusers install theirs lazily, so
#: their ``disable_default_handler`` (which installs it first) is used; huggingface_hub
#: installs its one at import time.
OWN_HANDLER_LIBRARIES: Mapping[str, str] = {
    "transformers.utils.logging": "transformers",
    "diffusers.utils.logging": "diffusers",
    "huggingface_hub.utils.logging": "huggingface_hub",
}

#: Libraries whose warnings become records of their own logger.
WARNING_LIBRARIES: tuple[str, ...] = (
    "diffusers",
    "transformers",
    "huggingface_hub",
    "accelerate",
    "peft",
    "safetensors",
    "tokenizers",
    "torch",
)

#: Warnings blamed on the engine's own lines come from the libraries it calls
#: (``stacklevel`` points at the caller): they are logged here.
ENGINE_LOGGER = "imagenodes.engine"

_lock = threading.Lock()
_installed = False
_level: int | None = None


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``hooks[name](module)`` right after module ``name`` has been executed.

    Python has no post-import hooks, and importing transformers or diffusers up front
    to reconfigure their logging would cost seconds (diffusers pulls torch) on paths
    that never touch a model; so the libraries are reconfigured the moment they load,
    before any of their code can log.
    """

    def __init__(self, hooks: Mapping[str, Callable[[ModuleType], None]]) -> None:
        self.hooks = hooks

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        hook = self.hooks.get(fullname)
        if hook is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        exec_module = getattr(loader, "exec_module", None)
        if loader is None or exec_module is None:
            return spec

        def exec_then_hook(module: ModuleType) -> None:
            exec_module(module)
            hook(module)

        # A path finder makes a new loader per module: patching it touches only this one.
        loader.exec_module = exec_then_hook  # type: ignore[method-assign]
        return spec


def _adopt(module: ModuleType) -> None:
    """Route one library's logs to logging's hierarchy (see :data:`OWN_HANDLER_LIBRARIES`).

    Never raises: a change in a library's logging helpers must not break its import.
    """
    name = OWN_HANDLER_LIBRARIES.get(module.__name__)
    if name is None:
        return
    try:
        if hasattr(module, "disable_default_handler"):
            module.disable_default_handler()
            module.enable_propagation()
        else:
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                if type(handler) is logging.StreamHandler:
                    logger.removeHandler(handler)
            logger.propagate = True
        if _level is not None:
            # After the library's own set-up, which resets its level to WARNING.
            logging.getLogger(name).setLevel(_level)
    except Exception:
        logging.getLogger(__name__).debug("could not reroute %s logging", name, exc_info=True)


def _library_of(filename: str) -> str | None:
    """The logger for a warning raised at ``filename``: its module's in the library
    (``diffusers.utils.deprecation_utils``), the engine's for a library warning blamed
    on an engine call, None for anything else."""
    for name in WARNING_LIBRARIES:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        root = os.path.dirname(path) + os.sep if path else None
        if root and filename.startswith(root):
            inner = os.path.splitext(filename[len(root) :])[0].split(os.sep)
            return ".".join([name, *(part for part in inner if part != "__init__")])
    engine = os.path.join(os.path.dirname(os.path.abspath(__file__)), "engine") + os.sep
    return ENGINE_LOGGER if filename.startswith(engine) else None


def _warnings_hook(previous: Callable[..., None]) -> Callable[..., None]:
    def showwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        name = _library_of(filename) if file is None else None
        if name is None:  # not ours to route: shown as it was before
            previous(message, category, filename, lineno, file, line)
            return
        where = os.path.basename(filename)
        logging.getLogger(name).warning("%s: %s (%s:%d)", category.__name__, message, where, lineno)

    showwarning.imagenodes_previous = previous  # type: ignore[attr-defined]
    return showwarning


def quiet_libraries(*, level: int | None = None) -> None:
    """Send the ML libraries' output through logging (idempotent, thread-safe).

    ``level``: also set the libraries' loggers to this level, now and when each loads
    (``imagenodes -v`` shows their INFO records); None keeps what an earlier call set
    (at first: the libraries' own levels).
    """
    global _installed, _level
    with _lock:
        if level is not None:
            _level = level
        if not _installed:
            _installed = True
            for name in {*OWN_HANDLER_LIBRARIES.values(), *WARNING_LIBRARIES}:
                logging.getLogger(name).addHandler(logging.NullHandler())
            hooks = dict.fromkeys(OWN_HANDLER_LIBRARIES, _adopt)
            sys.meta_path.insert(0, _AfterImport(hooks))
            warnings.showwarning = _warnings_hook(warnings.showwarning)
    for module_name in OWN_HANDLER_LIBRARIES:
        if module_name in sys.modules:  # already imported: adopt it now
            _adopt(sys.modules[module_name])
