"""nnlite: a readable, self-configuring U-Net for 3D medical image segmentation (after nnU-Net).

From Python (docs/python.md, `nnlite.api`): `nnlite.plan(RAW, WORK, …)`, `nnlite.add_config(WORK, …)`,
`nnlite.preprocess(WORK)`, `nnlite.train(WORK, fold=0, settings={…})`,
`nnlite.Predictor(WORK, …).predict(image)`. They load on first use: `import nnlite` imports neither
torch nor numpy.

`nnlite.plan`, `nnlite.preprocess` and `nnlite.train` are also the modules of the commands
(`python -m nnlite.plan`): Python binds a package's submodule to the package's attribute of the same
name whenever the submodule is imported. So those command modules are made callable here, a call
running the `nnlite.api` function of their name, and `nnlite.plan(…)` works whichever was imported
first.
"""

import importlib
import sys
import types

__version__ = "0.1.0"

_CALLABLE_COMMANDS = ("plan", "preprocess", "train")  # nnlite.<name>(…) runs nnlite.api.<name>(…)
_API_NAMES = ("Predictor", "Prediction", "FoldResult", "add_config")


class _CallableCommand(types.ModuleType):
    """A command module that, called, runs the `nnlite.api` function of its name."""

    def __call__(self, *args, **kwargs):
        api = importlib.import_module("nnlite.api")
        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(types.ModuleType):
    """nnlite itself: binding a command submodule (Python's import does it) makes that module callable."""

    def __setattr__(self, name, value):
        if name in _CALLABLE_COMMANDS and type(value) is types.ModuleType:
            value.__class__ = _CallableCommand
        super().__setattr__(name, value)


def __getattr__(name):
    """`nnlite.Predictor`, `nnlite.plan`, …: imported when first asked for."""
    if name in _CALLABLE_COMMANDS or name == "api":
        return importlib.import_module(f"nnlite.{name}")
    if name in _API_NAMES:
        return getattr(importlib.import_module("nnlite.api"), name)
    raise AttributeError(f"module 'nnlite' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_CALLABLE_COMMANDS, *_API_NAMES, "api"})


sys.modules[__name__].__class__ = _Package
