"""chestct: a DVC pipeline that trains and serves a chest CT cancer classifier.

The package has one module per concept; README.md lists them. Modules import downward only:
stages and other consumers import the library, never the other way round.

Importing the package stays cheap, so that the data stages never load TensorFlow. The custom
Keras layers and loss are still registered for ``keras.models.load_model`` after a plain
``import chestct``: at once when Keras is already imported, otherwise as soon as it is.
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

_KERAS_MODULES = ("chestct.layers", "chestct.losses")


def _register_keras_objects() -> None:
    for name in _KERAS_MODULES:
        importlib.import_module(name)


class _RegisterAfterKerasImport(importlib.abc.MetaPathFinder):
    """Import hook that registers chestct's Keras objects right after ``keras`` is imported."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "keras":
            return None

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("keras")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec

        execute_keras = spec.loader.exec_module

        def exec_module(module):
            execute_keras(module)
            _register_keras_objects()

        spec.loader.exec_module = exec_module
        return spec


if "keras" in sys.modules:
    _register_keras_objects()
elif not any(isinstance(finder, _RegisterAfterKerasImport) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterKerasImport())
