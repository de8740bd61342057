"""arithlens: mechanistic interpretability of arithmetic in language models.

The methods of Yu & Ananiadou (EMNLP 2024, Comparative Neuron Analysis) and Zhang et al.
(ICML 2024, path patching and precise SFT), one call each, on any model TransformerLens's
`TransformerBridge` can wrap.

The package imports lazily: `import arithlens` loads neither torch nor transformers;
`arithlens.load_model`, `arithlens.HeadAblation`, … and the subpackages load on first use.

Example:
    ```python
    import arithlens
    from arithlens import data

    model = arithlens.load_model()                     # SmolLM2-135M-Instruct, offline
    cases = data.arithmetic(model.tokenizer, ops="+", templates=[4])
    result = arithlens.HeadAblation().run(model, cases)
    result.top(5)
    ```
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> module defining it.
_EXPORTS = {
    "EvaluationResult": "arithlens.analysis.evaluation",
    "evaluate": "arithlens.analysis.evaluation",
    "HeadAblation": "arithlens.cna.heads",
    "HeadAblationResult": "arithlens.cna.heads",
    "LensModel": "arithlens.core.model",
    "Run": "arithlens.core.model",
    "load_model": "arithlens.core.loading",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:  # what IDEs and type checkers see
    from arithlens.analysis.evaluation import EvaluationResult, evaluate
    from arithlens.cna.heads import HeadAblation, HeadAblationResult
    from arithlens.core.loading import load_model
    from arithlens.core.model import LensModel, Run


def __getattr__(name: str) -> Any:
    """Load an exported name or a subpackage on first access."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if not name.startswith("_"):
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    import pkgutil

    submodules = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    return sorted(set(__all__) | set(submodules))


class _Package(types.ModuleType):
    """Keeps `arithlens.analysis.evaluation` the function when the `arithlens.analysis.evaluation` module is imported.

    Importing a submodule binds it as an attribute of its package; for a submodule that
    shares its name with an exported function (`evaluate`) the function wins, as it did
    when the package imported it eagerly.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == value.__name__ and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
