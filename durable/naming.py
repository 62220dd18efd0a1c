"""Names that stay the same however a module was loaded.

A workflow, a step or a class is found again after a crash by a name stored in the database.
Python names a script's functions after ``__main__`` (``python flow.py``), while the process
that resumes it imports the same file as ``flow`` (``oneshot recover --import flow``). The
*canonical* module name is the one the file has when imported: ``flow`` for ``python
flow.py``, ``pkg.flow`` for ``python -m pkg.flow`` or for ``pkg/flow.py`` inside a package
(directories holding ``__init__.py``). Every stored name uses it, and a stored name is
resolved back to the very objects of this process, ``__main__`` included.
"""

from __future__ import annotations

import importlib
import sys
from functools import cache
from pathlib import Path
from typing import Any

MAIN = "__main__"


def module_name_for_path(path: Path) -> str:
    """The dotted name ``path`` (a ``.py`` file) has when imported from its package root."""
    path = path.resolve()
    parts = [path.stem] if path.name != "__init__.py" else []
    directory = path.parent
    while (directory / "__init__.py").is_file() and directory.parent != directory:
        parts.insert(0, directory.name)
        directory = directory.parent
    return ".".join(parts)


def package_root(path: Path) -> Path:
    """The directory that must be on ``sys.path`` to import ``path`` by its module name."""
    directory = path.resolve().parent
    while (directory / "__init__.py").is_file() and directory.parent != directory:
        directory = directory.parent
    return directory


@cache
def main_module_name() -> str:
    """The canonical name of this process's ``__main__`` (itself when it has no file)."""
    main = sys.modules.get(MAIN)
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and spec.name != MAIN:
        name: str = spec.name  # python -m pkg.flow
        return name.removesuffix(".__main__") if name.endswith(".__main__") else name
    file = getattr(main, "__file__", None)
    if file:
        return module_name_for_path(Path(file))
    return MAIN  # an interactive session or python -c


def canonical_module(module: str) -> str:
    """``module``, with ``__main__`` replaced by the name its file has when imported."""
    return main_module_name() if module == MAIN else module


def qualified_name(obj: Any) -> str:
    """``canonical_module.qualname`` of a function or class."""
    return f"{canonical_module(obj.__module__)}.{obj.__qualname__}"


def import_module(name: str) -> Any:
    """The module called ``name`` here: this process's ``__main__`` when that is its
    canonical name (never a second copy of the script), else an import."""
    if name == MAIN or (name == main_module_name() and name != MAIN):
        return sys.modules[MAIN]
    return importlib.import_module(name)


def resolve(module: str, qualname: str) -> Any:
    """The object stored as ``module`` + ``qualname``; raises LookupError if it is not there
    (the module cannot be imported, or has no such attribute, or it is a local name)."""
    if "<locals>" in qualname:
        raise LookupError(f"{module}.{qualname} is defined inside a function")
    try:
        obj: Any = import_module(module)
    except Exception as exc:  # ImportError, or the module failing as it is imported
        raise LookupError(f"cannot import {module}: {exc}") from exc
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise LookupError(f"{module} has no {qualname}") from None
    return obj
