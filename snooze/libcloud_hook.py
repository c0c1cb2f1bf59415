"""Lets the seed's libcloud code run as written: ``get_driver(Provider.SNOOZE)`` with no import
of ours. Loaded at interpreter start-up by the ``snooze-libcloud.pth`` file that scripts/setup
puts in the virtual environment; it only watches for ``libcloud.compute.providers`` and, once
that module has loaded, registers the Snooze driver (``snooze.client.libcloud_driver``).

It runs in every interpreter of the virtual environment, so it imports nothing at start-up but
what the interpreter has already loaded: the finder and the loader are plain classes with the
import system's methods (subclassing ``importlib.abc`` cost ~30 ms per start, measured with
``python -X importtime``).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

TARGET = "libcloud.compute.providers"


class _RegisteringLoader:
    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        try:
            import snooze.client.libcloud_driver  # noqa: F401  (registers Provider.SNOOZE)
        except Exception:  # a broken driver must never break libcloud itself
            pass


class _Finder:
    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> ModuleSpec | None:
        if name != TARGET:
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _RegisteringLoader(spec.loader)  # type: ignore[assignment]
        return spec


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


install()
