"""arithlens: mechanistic interpretability of arithmetic in language models.

The methods of Yu & Ananiadou (EMNLP 2024, Comparative Neuron Analysis) and Zhang et al.
(ICML 2024, path patching and precise SFT), one call each, on any model TransformerLens's
``TransformerBridge`` can wrap.

Example::

    import arithlens
    from arithlens import data
    model = arithlens.load_model()                     # SmolLM2-135M-Instruct, offline
    cases = data.arithmetic(model.tokenizer, ops="+", templates=[4])
    result = arithlens.HeadAblation().run(model, cases)
    result.top(5)
"""

from arithlens.evaluate import Evaluation, evaluate
from arithlens.heads import HeadAblation, HeadAblationResult
from arithlens.models import LensModel, Run, load_model

__version__ = "0.1.0"

__all__ = [
    "Evaluation",
    "HeadAblation",
    "HeadAblationResult",
    "LensModel",
    "Run",
    "evaluate",
    "load_model",
    "__version__",
]
