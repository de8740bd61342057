"""Vocabulary projections of model vectors — Yu & Ananiadou §4.2 (Table 4) — and a
number-concept tagger for reading them.

**LogitLens.** Any ``d_model`` vector ``v`` — an FFN value vector ``fc2_k = W_out[l, k]``,
a subvalue ``m_k · fc2_k``, a residual stream state, a head's output ``z_h W_O[h]``, a
word embedding ``W_E[t]`` — is read in vocabulary space as the paper does,
``P_v = softmax(E v)`` (Geva et al., 2022), here through the model's own final norm and
unembedding::

    logits(v) = ln_final(v) @ W_U + b_U

computed by TransformerLens's :func:`~transformer_lens.tools.analysis.logit_lens.logit_readout`
(final norm statistics recomputed per vector). On RMSNorm models compatibility mode folds
the final norm's weight into ``W_U`` and ``b_U`` is zero, so the norm contributes only the
positive scalar ``1 / rms(v)``: the ranking of tokens is exactly the ranking of
``v @ W_U``, and ``value`` (a logit) is that dot product divided by ``rms(v)``. Table 4's
"top10 tokens" are the ``k`` largest logits (``direction="top"``); the ``k`` smallest
(``direction="bottom"``) are also listed.

**NumberConceptTagger.** ``tagger(token)`` returns the number or operation concept a
token names — ``"8"`` for ``"8"``, ``" 8"``, ``"▁eight"``, ``"Eight"``, ``"VIII"``,
``"huit"``, ``"acht"``, ``"otto"``, ``"ocho"``, ``"eighth"``, ``"8th"``; ``"+"`` for
``"+"``, ``"plus"``, ``"sum"``; ``"-"``, ``"*"``, ``"/"`` likewise — or ``None``. Rules
(all whole-token: ``"ten"`` inside ``"often"`` never counts, and ``"six"``/``"sixth"`` are
separate lexicon entries, both 6):

* leading/trailing whitespace and the SentencePiece ``▁`` / byte-level ``Ġ`` markers are
  stripped, words are matched case-insensitively and also without accents
  (``"fünf"``/``"funf"``); punctuation is not stripped (``"8."`` is not a concept);
* digit strings (any script: ``"٨"``), digit ordinals (``"3rd"``), single Unicode number
  characters (``"Ⅷ"``, ``"八"``), English cardinals, ordinals and multiplicatives
  (``"twice"``, ``"triple"``, ``"dozen"``) and ``tens-ones`` compounds (``"twenty-one"``);
  cardinals and ordinals 0–20 (plus tens, 100, 1000) in French, German, Italian, Spanish,
  Dutch and Portuguese;
* Roman numerals only when written in capitals, of two or more letters from ``I V X``
  and valid (``"II"``…``"XXXIX"``: ``"VIII"``, ``"XV"``, ``"III"``). The single letters
  ``I``, ``V``, ``X`` (and ``C``, ``D``, ``M``, ``L`` in any combination: ``"CD"``,
  ``"MD"``, ``"CV"``, ``"MIX"``, ``"DC"``) are mostly pronouns, letters or
  abbreviations, so they never count;
* operations: symbols ``+ ＋ ∑ - − * × ∗ ✕ / ÷ ∕`` and words (``plus``, ``add``,
  ``sum``, ``minus``, ``subtract``, ``difference``, ``times``, ``multiply``, ``product``,
  ``divide``, ``division``, ``quotient``, ``ratio`` and their inflections, and the same in
  the six languages: ``somme``, ``più``, ``menos``, ``fois``, ``diviso`` …);
* a few subword stems the paper's tables show as number tokens (``"Fif"``/``"fif"`` → 5,
  ``"twen"`` → 20) count unless ``stems=False``;
* words that are mostly something else — articles (``un``, ``une``, ``ein``, ``een``,
  ``um``, ``una``), English words (``due``, ``seize``, ``once``, ``elf``, ``cent``,
  ``second``, ``single``, ``total``, ``less``), frequent subword pieces (``tre``, ``tien``,
  ``dos``, ``mil``, ``sei``) and number prefixes (``tri``, ``quad``, ``oct``) — are
  excluded unless ``ambiguous=True``.

Example::

    import arithlens
    from arithlens.cna import LogitLens, NumberConceptTagger

    model = arithlens.load_model()
    lens = LogitLens(k=10)
    result = lens.run(model, [LogitLens.neuron(model, 28, 1234),
                              LogitLens.embedding(model, "3"),
                              LogitLens.residual(model, 20, "3+5=")])
    result.df                       # component, direction, rank, token, value, concept
    result.tokens(direction="top")  # {component: [tokens]}
    lens.top_tokens(model, model.bridge.W_out[28, :5])   # list of 5 token lists
    tagger = NumberConceptTagger()
    tagger("huit"), tagger(" VIII"), tagger("often"), tagger.count(["8", "x", "plus"])
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Sequence

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int

from arithlens.results import Result

Direction = Literal["top", "bottom"]
_DIRECTIONS = ("top", "bottom")
_STAGES = ("pre", "mid", "post")

# ---------------------------------------------------------------------------- lexicon
_EN_CARDINALS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
    "eighteen", "nineteen",
]  # fmt: skip
_EN_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_EN_ORDINALS = [
    "zeroth", "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
    "ninth", "tenth", "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth",
    "sixteenth", "seventeenth", "eighteenth", "nineteenth",
]  # fmt: skip
_EN_TENS_ORD = {"twentieth": 20, "thirtieth": 30, "fortieth": 40, "fiftieth": 50, "sixtieth": 60,
                "seventieth": 70, "eightieth": 80, "ninetieth": 90}  # fmt: skip
_EN_OTHER = {
    "hundred": 100, "thousand": 1000, "million": 1000000, "billion": 1000000000,
    "hundredth": 100, "thousandth": 1000, "nought": 0,
    "twice": 2, "thrice": 3, "double": 2, "triple": 3, "quadruple": 4, "quintuple": 5,
    "dozen": 12,
}  # fmt: skip

# Words per language, value first. Ambiguous ones are listed in _AMBIGUOUS instead.
_FOREIGN: dict[int, str] = {
    0: "zéro cero nul",
    1: "eins één uno premier première erste primo primero primera eerste primeiro primeira",
    2: "deux zwei twee dois duas deuxième zweite tweede",
    3: "trois drei drie tres três troisième dritte terzo tercero tercera derde terceiro",
    4: "quatre vier quattro cuatro quatro quatrième vierte quarto vierde",
    5: "cinq fünf cinque cinco vijf cinquième fünfte quinto vijfde",
    6: "sechs seis zes sixième sechste sesto sexto zesde",
    7: "sept sieben sette siete sete zeven septième siebte settimo séptimo sétimo zevende",
    8: "huit acht otto ocho oito huitième achte ottavo octavo oitavo achtste",
    9: "neuf neun nove nueve negen neuvième neunte nono noveno negende",
    10: "dix zehn dieci diez dez dixième zehnte decimo décimo tiende",
    11: "onze undici",
    12: "douze zwölf dodici doce doze twaalf",
    13: "treize dreizehn tredici trece treze dertien",
    14: "quatorze vierzehn quattordici catorce catorze veertien",
    15: "quinze fünfzehn quindici quince vijftien",
    16: "sechzehn sedici dieciséis dezesseis zestien",
    17: "siebzehn diciassette diecisiete dezessete zeventien",
    18: "achtzehn diciotto dieciocho dezoito achttien",
    19: "neunzehn diciannove diecinueve dezenove negentien",
    20: "vingt zwanzig venti veinte vinte twintig",
    30: "trente dreißig trenta treinta trinta dertig",
    40: "quarante vierzig quaranta cuarenta quarenta veertig",
    50: "cinquante fünfzig cinquanta cincuenta vijftig",
    60: "soixante sechzig sessanta sesenta sessenta zestig",
    100: "hundert cento cien ciento cem honderd",
    1000: "mille tausend duizend",
}

_OPERATION_WORDS: dict[str, str] = {
    "+": "plus add adds added adding addition sum sums summed summing summation "
    "più más somme somma suma soma summe",
    "-": "minus subtract subtracts subtracted subtracting subtraction difference differences "
    "moins meno menos différence differenza diferencia diferença differenz",
    "*": "times multiply multiplies multiplied multiplying multiplication product products "
    "fois vezes veces produit prodotto producto produto produkt",
    "/": "divide divides divided dividing division quotient ratio "
    "divisé diviso dividido geteilt gedeeld",
}
_OPERATION_SYMBOLS = {"+": "+", "＋": "+", "∑": "+", "-": "-", "−": "-", "*": "*", "×": "*", "∗": "*",
                      "✕": "*", "/": "/", "÷": "/", "∕": "/"}  # fmt: skip

# Mostly something else (articles, English words, subword pieces, prefixes): opt-in only.
_AMBIGUOUS: dict[str, str] = {
    "un": "1", "une": "1", "ein": "1", "eine": "1", "een": "1", "um": "1", "uma": "1", "una": "1",
    "single": "1", "null": "0", "nulla": "0", "nil": "0", "naught": "0",
    "second": "2", "segundo": "2", "segunda": "2", "secondo": "2", "pair": "2", "due": "2", "dos": "2",
    "tre": "3", "tri": "3", "quad": "4", "cuarto": "4", "sei": "6", "hex": "6", "oct": "8", "octa": "8",
    "tien": "10", "deca": "10", "once": "11", "elf": "11", "seize": "16", "score": "20",
    "cent": "100", "mil": "1000", "grand": "1000",
    "total": "+", "mais": "+", "som": "+", "mas": "+", "less": "-", "mal": "*", "per": "*", "por": "*",
    "keer": "*", "over": "/",
}  # fmt: skip

# Subword stems shown as number tokens in the paper's Table 7 ("Fif", "fif").
_STEMS = {"fif": "5", "twen": "20", "twent": "20"}

_ROMAN = re.compile(r"^X{0,3}(IX|IV|V?I{0,3})$")
_ROMAN_VALUES = {"I": 1, "V": 5, "X": 10}
_DIGIT_ORDINAL = re.compile(r"^(\d+)(st|nd|rd|th)$")
_MARKERS = "▁Ġ"


def _strip_accents(word: str) -> str:
    decomposed = unicodedata.normalize("NFD", word)
    return unicodedata.normalize("NFC", "".join(c for c in decomposed if not unicodedata.combining(c))).replace("ß", "ss")


def _roman_value(s: str) -> int:
    total = 0
    for i, ch in enumerate(s):
        v = _ROMAN_VALUES[ch]
        total += -v if i + 1 < len(s) and _ROMAN_VALUES[s[i + 1]] > v else v
    return total


def _base_lexicon() -> dict[str, str]:
    lex: dict[str, str] = {}
    for i, w in enumerate(_EN_CARDINALS):
        lex[w] = str(i)
    for i, w in enumerate(_EN_ORDINALS):
        lex[w] = str(i)
    for table in (_EN_TENS, _EN_TENS_ORD, _EN_OTHER):
        lex.update({w: str(v) for w, v in table.items()})
    lex.pop("second")  # mostly the time unit: ambiguous
    for value, words in _FOREIGN.items():
        for w in words.split():
            lex[w] = str(value)
    for concept, words in _OPERATION_WORDS.items():
        for w in words.split():
            lex[w] = concept
    return lex


class NumberConceptTagger:
    """Recognise tokens naming numbers or arithmetic operations (see the module docstring).

    Args:
        roman: Count capital Roman numerals of two or more letters (``"VIII"``, ``"XV"``).
        operations: Count operation symbols and words (concepts ``+ - * /``).
        stems: Count the subword stems ``fif`` (5) and ``twen``/``twent`` (20).
        ambiguous: Also count words that are mostly something else (``un``, ``due``,
            ``elf``, ``second``, ``tre`` …).

    ``tagger(token)`` returns the concept (``"8"``, ``"+"``) or ``None``;
    :meth:`is_concept` a bool; :meth:`count` how many tokens of a list are concepts;
    :meth:`vocab_concepts` the concept of every token id of a tokenizer (cached).
    """

    def __init__(self, roman: bool = True, operations: bool = True, stems: bool = True, ambiguous: bool = False):
        self.roman = bool(roman)
        self.operations = bool(operations)
        self.stems = bool(stems)
        self.ambiguous = bool(ambiguous)
        lex = _base_lexicon()
        if stems:
            lex.update(_STEMS)
        if ambiguous:
            lex.update(_AMBIGUOUS)
        if not operations:
            lex = {w: c for w, c in lex.items() if c not in "+-*/"}
        # Accent-free spellings too ("funf", "dieciseis"), unless that spelling is ambiguous.
        for w, c in list(lex.items()):
            plain = _strip_accents(w)
            if plain != w and plain not in lex and (ambiguous or plain not in _AMBIGUOUS):
                lex[plain] = c
        self._lexicon = lex
        self._vocab_cache: dict[int, tuple[Any, list[str | None]]] = {}

    def __repr__(self) -> str:
        return (
            f"NumberConceptTagger(roman={self.roman}, operations={self.operations}, "
            f"stems={self.stems}, ambiguous={self.ambiguous})"
        )

    @staticmethod
    def normalize(token: str) -> str:
        """The token without surrounding whitespace and ``▁``/``Ġ`` markers (case kept)."""
        s = unicodedata.normalize("NFC", str(token)).strip()
        while s and s[0] in _MARKERS:
            s = s[1:].strip()
        return s

    def __call__(self, token: str) -> str | None:
        s = self.normalize(token)
        if not s:
            return None
        if s.isdecimal():  # any script's decimal digits: "8", "٨"
            return str(int(s))
        m = _DIGIT_ORDINAL.match(s.lower())
        if m:
            return str(int(m.group(1)))
        if self.operations and s in _OPERATION_SYMBOLS:
            return _OPERATION_SYMBOLS[s]
        if len(s) == 1 and not s.isascii():
            try:
                value = unicodedata.numeric(s)
            except (TypeError, ValueError):
                value = None
            if value is not None and float(value).is_integer():
                return str(int(value))
        if self.roman and len(s) >= 2 and set(s) <= set("IVX") and _ROMAN.match(s):
            return str(_roman_value(s))
        word = s.casefold()
        hit = self._lexicon.get(word)
        if hit is None:
            hit = self._lexicon.get(_strip_accents(word))
        if hit is None and "-" in word.strip("-"):
            tens, _, ones = word.partition("-")
            if tens in _EN_TENS and ones in _EN_CARDINALS[1:10]:
                hit = str(_EN_TENS[tens] + _EN_CARDINALS.index(ones))
        return hit

    def is_concept(self, token: str) -> bool:
        return self(token) is not None

    def concepts(self, tokens: Iterable[str]) -> list[str | None]:
        return [self(t) for t in tokens]

    def count(self, tokens: Iterable[str], distinct: bool = False) -> int:
        """How many of ``tokens`` are concepts (``distinct=True``: how many different ones)."""
        found = [c for c in self.concepts(tokens) if c is not None]
        return len(set(found)) if distinct else len(found)

    def vocab_concepts(self, tokenizer: Any) -> list[str | None]:
        """The concept of every token id (decoded one by one), cached per tokenizer."""
        key = id(tokenizer)
        hit = self._vocab_cache.get(key)
        if hit is not None and hit[0] is tokenizer:
            return hit[1]
        n = len(tokenizer)
        concepts = [self(tokenizer.decode([i])) for i in range(n)]
        self._vocab_cache[key] = (tokenizer, concepts)
        return concepts

    def vocab_index(self, tokenizer: Any, d_vocab: int | None = None) -> Int[torch.Tensor, "vocab"]:
        """Per token id, an integer id of its concept (``-1``: none), length ``d_vocab``."""
        concepts = self.vocab_concepts(tokenizer)
        names = {c: i for i, c in enumerate(sorted({c for c in concepts if c is not None}))}
        n = d_vocab if d_vocab is not None else len(concepts)
        index = torch.full((n,), -1, dtype=torch.long)
        for i, c in enumerate(concepts[:n]):
            if c is not None:
                index[i] = names[c]
        return index

    def vocab_mask(self, tokenizer: Any, d_vocab: int | None = None) -> Bool[torch.Tensor, "vocab"]:
        return self.vocab_index(tokenizer, d_vocab) >= 0


# ---------------------------------------------------------------------------- components
@dataclass(frozen=True)
class Component:
    """A named ``d_model`` vector to read through the lens."""

    name: str
    vector: Float[torch.Tensor, "d_model"]
    kind: str = "vector"


def _prompt_tokens(model: Any, prompt: Any) -> Int[torch.Tensor, "1 pos"]:
    ids = model.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
    if not ids:
        raise ValueError(f"prompt {prompt!r} encodes to zero tokens")
    return torch.tensor([ids], device=model.device)


def _grab(model: Any, prompt: Any, name: str, position: int) -> torch.Tensor:
    """Activation ``name`` of one prompt at ``position`` (one forward, hook removed after)."""
    tokens = _prompt_tokens(model, prompt)
    n = tokens.shape[1]
    if not -n <= position < n:
        raise ValueError(f"position {position} is out of range for a prompt of {n} tokens")
    store: dict[str, torch.Tensor] = {}

    def grab(act: torch.Tensor, hook: Any) -> None:
        store["act"] = act[0, position].detach().clone()

    layer = int(name.split(".")[1])
    with torch.no_grad(), model.hooked([(name, grab)]):
        model.bridge(tokens, stop_at_layer=layer + 1)
    return store["act"]


def _check_direction(direction: str) -> str:
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {_DIRECTIONS}")
    return direction


def as_vectors(model: Any, components: Any) -> tuple[list[str], Float[torch.Tensor, "n d_model"]]:
    """Names and stacked vectors of a Component, a list of them, a ``{name: vector}`` dict,
    or a ``[d_model]`` / ``[n, d_model]`` tensor (named ``"0"``, ``"1"``, …)."""
    if isinstance(components, Component):
        components = [components]
    if isinstance(components, torch.Tensor):
        vecs = components[None] if components.ndim == 1 else components
        names = [str(i) for i in range(vecs.shape[0])]
    elif isinstance(components, dict):
        names = [str(k) for k in components]
        vecs = torch.stack([torch.as_tensor(v).reshape(-1) for v in components.values()]) if components else None
    else:
        items = list(components)
        if not all(isinstance(c, Component) for c in items):
            raise ValueError("components must be Components, a {name: vector} dict, or a [n, d_model] tensor")
        names = [c.name for c in items]
        vecs = torch.stack([c.vector.reshape(-1) for c in items]) if items else None
    if vecs is None or vecs.shape[0] == 0:
        raise ValueError("no vectors to read: pass at least one component")
    if vecs.ndim != 2 or vecs.shape[-1] != model.d_model:
        raise ValueError(f"vectors must be [n, d_model={model.d_model}], got shape {tuple(vecs.shape)}")
    return names, vecs.to(device=model.device, dtype=model.bridge.W_U.dtype)


# ---------------------------------------------------------------------------- result
@dataclass
class LogitLensResult(Result):
    """Top and bottom tokens of each component.

    ``df``: one row per (component, direction, rank) with ``token``, ``token_id``,
    ``value`` (the logit ``ln_final(v) @ W_U + b_U``), ``concept`` (the tagger's concept
    or None) and ``is_number_concept``.
    """

    k: int = 10

    def tokens(self, direction: Direction = "top") -> dict[str, list[str]]:
        """``{component: [tokens by rank]}`` for one direction."""
        _check_direction(direction)
        part = self.df[self.df["direction"] == direction]
        return {c: list(g.sort_values("rank")["token"]) for c, g in part.groupby("component", sort=False)}

    def concept_counts(self) -> pd.DataFrame:
        """Number of concept tokens per component and direction."""
        return (
            self.df.groupby(["component", "direction"], sort=False)["is_number_concept"]
            .sum()
            .rename("n_concepts")
            .reset_index()
        )

    def table(self, direction: Direction = "top") -> pd.DataFrame:
        """Table 4's layout: one row per component with its tokens as a list string."""
        rows = [{"component": c, f"{direction}{self.k} tokens": ", ".join(repr(t) for t in toks)}
                for c, toks in self.tokens(direction).items()]  # fmt: skip
        return pd.DataFrame(rows)

    def plot(self, direction: Direction = "top", **kwargs: Any) -> Any:
        """A table figure: one column per component, its tokens by rank, concepts in bold."""
        import plotly.graph_objects as go

        toks = self.tokens(direction)
        part = self.df[self.df["direction"] == direction]
        cells, colors = [], []
        for comp in toks:
            rows = part[part["component"] == comp].sort_values("rank")
            cells.append([f"<b>{t!r}</b>" if c else repr(t) for t, c in zip(rows["token"], rows["is_number_concept"])])
            colors.append(["#fde0c5" if c else "white" for c in rows["is_number_concept"]])
        fig = go.Figure(
            go.Table(
                header={"values": ["rank"] + [f"<b>{c}</b>" for c in toks], "align": "left"},
                cells={"values": [list(range(1, self.k + 1))] + cells, "align": "left",
                       "fill_color": [["white"] * self.k] + colors},
            )
        )  # fmt: skip
        fig.update_layout(title=f"Logit lens: {direction}-{self.k} tokens (number/operation concepts highlighted)", **kwargs)
        return fig


# ---------------------------------------------------------------------------- the lens
class LogitLens:
    """Read vectors in vocabulary space through the final norm and unembedding (Table 4).

    Args:
        k: Tokens kept per direction.
        bottom: Also list the ``k`` lowest-logit tokens.
        tagger: The :class:`NumberConceptTagger` marking concept tokens (default one).
        chunk_size: Vectors per unembedding matmul.

    ``top_tokens`` / ``top_ids`` read a ``[n, d_model]`` tensor directly; ``run`` returns
    a tidy :class:`LogitLensResult`. The static constructors build named components:
    :meth:`neuron`, :meth:`subvalue`, :meth:`head_output`, :meth:`residual`,
    :meth:`embedding`.
    """

    def __init__(self, k: int = 10, bottom: bool = True, tagger: NumberConceptTagger | None = None, chunk_size: int = 256):
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise ValueError(f"k={k!r} must be a positive integer")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(f"chunk_size={chunk_size!r} must be a positive integer")
        self.k = k
        self.bottom = bool(bottom)
        self.tagger = tagger or NumberConceptTagger()
        self.chunk_size = chunk_size

    # ------------------------------------------------------------------ vectors
    @torch.no_grad()
    def logits(self, model: Any, vectors: Float[torch.Tensor, "n d_model"]) -> Float[torch.Tensor, "n vocab"]:
        """``ln_final(v) @ W_U + b_U`` of every vector (full vocabulary; mind the memory)."""
        from transformer_lens.tools.analysis.logit_lens import logit_readout

        _, vecs = as_vectors(model, vectors)
        return logit_readout(model.bridge, vecs, chunk_size=self.chunk_size).values

    @torch.no_grad()
    def top_ids(
        self, model: Any, vectors: Float[torch.Tensor, "n d_model"], k: int | None = None, largest: bool = True
    ) -> tuple[Float[torch.Tensor, "n k"], Int[torch.Tensor, "n k"]]:
        """Logits and ids of the ``k`` highest (``largest=False``: lowest) tokens per vector."""
        from transformer_lens.tools.analysis.logit_lens import logit_readout

        k = self.k if k is None else k
        if isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= model.d_vocab:
            raise ValueError(f"k={k!r} must be an integer in 1..{model.d_vocab}")
        _, vecs = as_vectors(model, vectors)
        values, ids = [], []
        for start in range(0, vecs.shape[0], self.chunk_size):
            chunk = vecs[start : start + self.chunk_size]
            if largest:
                # logit_readout's own top-k path (norm, W_U, b_U, output transform).
                out = logit_readout(model.bridge, chunk, top_k=k, chunk_size=self.chunk_size)
                values.append(out.values.float().cpu())
                ids.append(out.top_ids.cpu())
            else:
                logits = logit_readout(model.bridge, chunk, chunk_size=self.chunk_size).values
                low = torch.topk(logits, k, dim=-1, largest=False, sorted=True)
                values.append(low.values.float().cpu())
                ids.append(low.indices.cpu())
        return torch.cat(values), torch.cat(ids)

    def top_tokens(
        self, model: Any, vectors: Float[torch.Tensor, "n d_model"], k: int | None = None, largest: bool = True
    ) -> list[list[str]]:
        """Decoded top-``k`` (or bottom-``k``) tokens of each vector: ``n`` lists of ``k``."""
        _, ids = self.top_ids(model, vectors, k=k, largest=largest)
        return [model.token_strs(row) for row in ids.tolist()]

    def run(self, model: Any, components: Any) -> LogitLensResult:
        """Top (and bottom) ``k`` tokens of named components or vectors, tagged."""
        from arithlens.models import load_model

        model = load_model(model)
        names, vecs = as_vectors(model, components)
        rows = []
        for direction in ("top", "bottom") if self.bottom else ("top",):
            values, ids = self.top_ids(model, vecs, largest=direction == "top")
            for name, vals, row in zip(names, values.tolist(), ids.tolist()):
                for rank, (v, t) in enumerate(zip(vals, row), start=1):
                    token = model.decode([t])
                    concept = self.tagger(token)
                    rows.append(
                        {"component": name, "direction": direction, "rank": rank, "token": token, "token_id": t,
                         "value": v, "concept": concept, "is_number_concept": concept is not None}
                    )  # fmt: skip
        return LogitLensResult(df=pd.DataFrame(rows), k=self.k)

    # ------------------------------------------------------------------ constructors
    @staticmethod
    def neuron(model: Any, layer: int, neuron: int) -> Component:
        """FFN neuron ``layer_neuron``'s value vector ``fc2_k = W_out[layer, neuron]`` (Table 4)."""
        idx = model.check_neurons(layer, [neuron])
        return Component(f"{layer}_{int(idx[0])}", _w_out(model, layer)[int(idx[0])], "neuron")

    @staticmethod
    def subvalue(model: Any, layer: int, neuron: int, prompt: Any, position: int = -1) -> Component:
        """The subvalue ``m_k · fc2_k`` of a neuron on a prompt (``m_k``: ``mlp.hook_post``)."""
        idx = int(model.check_neurons(layer, [neuron])[0])
        m = _grab(model, prompt, f"blocks.{layer}.mlp.hook_post", position)[idx]
        return Component(f"{layer}_{idx} on {prompt!r}", m * _w_out(model, layer)[idx], "subvalue")

    @staticmethod
    def head_output(model: Any, layer: int, head: int, prompt: Any, position: int = -1) -> Component:
        """Head ``layer.head``'s output ``z_h W_O[layer, head]`` on a prompt at ``position``."""
        model.check_head(layer, head)
        z = _grab(model, prompt, f"blocks.{layer}.attn.hook_z", position)[head]
        return Component(f"head {layer}.{head} on {prompt!r}", z @ model.bridge.blocks[layer].attn.W_O[head].detach(), "head")

    @staticmethod
    def residual(model: Any, layer: int, prompt: Any, position: int = -1, stage: str = "pre") -> Component:
        """The residual stream of a prompt entering (``pre``), inside (``mid``, after
        attention) or leaving (``post``) block ``layer``."""
        model.check_layer(layer)
        if stage not in _STAGES:
            raise ValueError(f"stage {stage!r} is not one of {_STAGES}")
        x = _grab(model, prompt, f"blocks.{layer}.hook_resid_{stage}", position)
        return Component(f"resid_{stage} {layer} on {prompt!r}", x, "residual")

    @staticmethod
    def embedding(model: Any, token: str | int) -> Component:
        """The word embedding ``W_E[t]`` of a single-token string or a token id."""
        if isinstance(token, str):
            ids = model.encode(token)
            if len(ids) != 1:
                raise ValueError(f"{token!r} is {len(ids)} tokens ({model.token_strs(ids)}); pass a single token or an id")
            tid, label = ids[0], token
        else:
            tid, label = int(token), model.decode([int(token)])
        if not 0 <= tid < model.bridge.W_E.shape[0]:
            raise ValueError(f"token id {tid} is out of range 0..{model.bridge.W_E.shape[0] - 1}")
        return Component(f"word {label!r}", model.bridge.W_E[tid].detach(), "embedding")


def neuron_vectors(model: Any, layer: int, neurons: Sequence[int] | None = None) -> Float[torch.Tensor, "n d_model"]:
    """``W_out[layer, neurons]`` (all neurons when ``neurons`` is None)."""
    model.check_layer(layer)
    if neurons is None:
        return _w_out(model, layer)
    return _w_out(model, layer)[model.check_neurons(layer, neurons).to(model.device)]


def _w_out(model: Any, layer: int) -> Float[torch.Tensor, "d_mlp d_model"]:
    """``W_out[layer]`` from the block itself (the bridge's stacked ``W_out`` rebuilds every layer)."""
    return model.bridge.blocks[layer].mlp.W_out.detach()
