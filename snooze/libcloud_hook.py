"""Lets the seed's libcloud code run as written: ``get_driver(Provider.SNOOZE)`` with no import
of ours. Loaded at interpreter start-up by the ``snooze-libcloud.pth`` file that scripts/setup
puts in the virtual environment; it only watches for ``libcloud.compute.providers`` and, once
that module has loaded, registers the Snooze driver (``snooze.client.libcloud_driver``).

Standard library only, and nothing happens unless libcloud is imported, so start-up stays cheap.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

TARGET = "libcloud.compute.providers"


class _RegisteringLoader(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        try:
            import snooze.client.libcloud_driver  # noqa: F401  (registers Provider.SNOOZE)
        except Exception:  # a broken driver must never break libcloud itself
            pass


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _RegisteringLoader(spec.loader)
        return spec


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


install()
