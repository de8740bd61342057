"""arithlens: mechanistic interpretability of arithmetic in language models.

The methods of Yu & Ananiadou (EMNLP 2024, Comparative Neuron Analysis: [`arithlens.cna`][arithlens.cna])
and Zhang et al. (ICML 2024, path patching and precise SFT: [`arithlens.circuits`][arithlens.circuits]),
one call each, on any model TransformerLens's `TransformerBridge` can wrap.

The package is layered; each layer imports only the ones below it:

* `arithlens.core` — the model and its loading, placement, the dataset cache, forward
  restarts, readout, interventions, hook names, validation, distributed helpers.
* `arithlens.data` — the papers' datasets.
* `arithlens.analysis` — the [`Analysis`][arithlens.analysis.base.Analysis] contract,
  results, evaluation, attribution, the shared fine-tuning pieces.
* `arithlens.cna`, `arithlens.circuits` — one subpackage per paper.
* `arithlens.app` — the command line, the `arithlens run` pipeline and its report.

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

from arithlens import circuits, cna, data
from arithlens.analysis.base import Analysis
from arithlens.analysis.evaluation import EvaluationResult, evaluate
from arithlens.analysis.results import Result
from arithlens.analysis.saving import load_result
from arithlens.cna.heads import HeadAblation, HeadAblationResult
from arithlens.core.cache import DatasetCache
from arithlens.core.loading import load_model
from arithlens.core.model import LensModel
from arithlens.core.names import Component

__version__ = "0.1.0"

__all__ = [
    "Analysis",
    "Component",
    "DatasetCache",
    "EvaluationResult",
    "HeadAblation",
    "HeadAblationResult",
    "LensModel",
    "Result",
    "__version__",
    "circuits",
    "cna",
    "data",
    "evaluate",
    "load_model",
    "load_result",
]
