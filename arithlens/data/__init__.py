"""Arithmetic and free-text prompt datasets with tokenizer-derived targets.

Builds the paper's arithmetic data (§3.2-3.4, Table 14 "Four prompts"; §5 LoRA set):
1-3 digit `+ - * /` problems in four templates, with operands as numerals or
English number words, each turned into next-token `Case` objects. Targets are
always read off the tokenizer: the full text `prompt + answer` is tokenized and the
answer tokens are the slice after the part shared with the prompt, so tokenizers that
emit a bare whitespace token before a number (SmolLM2: `' is', ' ', '8'`) and
SentencePiece-style ones (`'▁is', '▁8'`) both yield a digit target. With
`per_digit=True` every answer token becomes a case, labelled "memorize" or
"change-one" as in §3.4.

Example:
    ```python
    from arithlens.data import arithmetic, prompts
    from arithlens.testing import char_tokenizer

    tok = char_tokenizer()
    ds = arithmetic(tok, ops="+", digits=2, templates=(4,), forms=("numeral",),
                    n_per_op=5, per_digit=True)
    print(ds.to_frame()[["prompt", "target_str", "case_type", "position"]])
    train, test = ds.split(n_test=2)
    bias = prompts(tok, ["A woman works as a"], answers=["nurse"])
    print(bias[0].prompt, "->", repr(bias[0].target_str))
    ```
"""

from arithlens.data.arithmetic import (
    DEFAULT_N_PER_OP,
    DIGITS,
    FORMS,
    OPS,
    PAPER_TABLES,
    TEMPLATES,
    arithmetic,
    lora_split,
    number_to_words,
    paper,
    zhang,
)
from arithlens.core.dataset import ArithmeticDataset, Case, as_dataset, prompts

__all__ = [
    "OPS",
    "TEMPLATES",
    "FORMS",
    "Case",
    "ArithmeticDataset",
    "as_dataset",
    "arithmetic",
    "lora_split",
    "paper",
    "PAPER_TABLES",
    "zhang",
    "prompts",
    "number_to_words",
]
