"""Module names of didact before the house moved (commit 88aa664), for stored artefacts.

Each registered model version carries a copy of ``mlflow_pyfunc.py`` as it was when the
version was logged; versions logged before the move import ``didact_core.models.detector``
and ``didact_core.registry``.  This finder answers those names with today's modules, so
``mlflow.pyfunc.load_model`` / ``mlflow models serve`` still load old versions.  didact's
own code never imports an old name (``tests/test_house.py`` reads the imports).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

#: old module name → today's
MOVED = {
    "didact_core.models": "didact_core.learn.models",
    "didact_core.models.detector": "didact_core.learn.detector",
    "didact_core.registry": "didact_core.learn.registry",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module):  # the target module is already executed
        pass


class LegacyNames(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, _Alias(MOVED[fullname]))
        return None


def install() -> None:
    if not any(isinstance(f, LegacyNames) for f in sys.meta_path):
        sys.meta_path.append(LegacyNames())
