"""A number-concept tagger for reading vocabulary projections — Yu & Ananiadou §4.2, §4.4.

Tables 4, 7 and 8 count how many of a vector's top tokens name a number or an arithmetic
operation. [`NumberConceptTagger`][arithlens.cna.concepts.NumberConceptTagger] decides
that for one token: `tagger(token)` returns the concept — `"8"` for `"8"`, `" 8"`,
`"▁eight"`, `"Eight"`, `"VIII"`, `"huit"`, `"acht"`, `"otto"`, `"ocho"`, `"eighth"`,
`"8th"`; `"+"` for `"+"`, `"plus"`, `"sum"`; `"-"`, `"*"`, `"/"` likewise — or `None`.
Rules (all whole-token: `"ten"` inside `"often"` never counts, and `"six"`/`"sixth"` are
separate lexicon entries, both 6):

* leading/trailing whitespace and the SentencePiece `▁` / byte-level `Ġ` markers are
  stripped, words are matched case-insensitively and also without accents
  (`"fünf"`/`"funf"`); punctuation is not stripped (`"8."` is not a concept);
* digit strings (any script: `"٨"`), digit ordinals (`"3rd"`), single Unicode number
  characters (`"Ⅷ"`, `"八"`), English cardinals, ordinals and multiplicatives
  (`"twice"`, `"triple"`, `"dozen"`) and `tens-ones` compounds (`"twenty-one"`);
  cardinals and ordinals 0–20 (plus tens, 100, 1000) in French, German, Italian, Spanish,
  Dutch and Portuguese;
* Roman numerals only when written in capitals, of two or more letters from `I V X`
  and valid (`"II"`…`"XXXIX"`: `"VIII"`, `"XV"`, `"III"`). The single letters
  `I`, `V`, `X` (and `C`, `D`, `M`, `L` in any combination: `"CD"`, `"MD"`, `"CV"`,
  `"MIX"`, `"DC"`) are mostly pronouns, letters or abbreviations, so they never count;
* operations: symbols `+ ＋ ∑ - − * × ∗ ✕ / ÷ ∕` and words (`plus`, `add`, `sum`,
  `minus`, `subtract`, `difference`, `times`, `multiply`, `product`, `divide`,
  `division`, `quotient`, `ratio` and their inflections, and the same in the six
  languages: `somme`, `più`, `menos`, `fois`, `diviso` …);
* a few subword stems the paper's tables show as number tokens (`"Fif"`/`"fif"` → 5,
  `"twen"` → 20) count unless `stems=False`;
* words that are mostly something else — articles (`un`, `une`, `ein`, `een`, `um`,
  `una`), English words (`due`, `seize`, `once`, `elf`, `cent`, `second`, `single`,
  `total`, `less`), frequent subword pieces (`tre`, `tien`, `dos`, `mil`, `sei`) and
  number prefixes (`tri`, `quad`, `oct`) — are excluded unless `ambiguous=True`.

Example:
    ```python
    from arithlens.cna import NumberConceptTagger

    tagger = NumberConceptTagger()
    tagger("huit"), tagger(" VIII"), tagger("often")    # ('8', '8', None)
    tagger.count(["8", "x", "plus"])                    # 2
    ```
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Iterable

import torch
from jaxtyping import Bool, Int

from arithlens.core import validate

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
    """Recognise tokens naming numbers or arithmetic operations (rules: the module docstring).

    `tagger(token)` returns the concept (`"8"`, `"+"`) or `None`;
    [`is_concept`][arithlens.cna.concepts.NumberConceptTagger.is_concept] a bool;
    [`count`][arithlens.cna.concepts.NumberConceptTagger.count] how many tokens of a list are
    concepts; [`vocab_concepts`][arithlens.cna.concepts.NumberConceptTagger.vocab_concepts]
    the concept of every token id of a tokenizer (cached).

    Args:
        roman: Count capital Roman numerals of two or more letters (`"VIII"`, `"XV"`).
        operations: Count operation symbols and words (concepts `+ - * /`).
        stems: Count the subword stems `fif` (5) and `twen`/`twent` (20).
        ambiguous: Also count words that are mostly something else (`un`, `due`, `elf`,
            `second`, `tre` …).
    """

    def __init__(self, roman: bool = True, operations: bool = True, stems: bool = True, ambiguous: bool = False):
        self.roman = validate.boolean(roman, "roman")
        self.operations = validate.boolean(operations, "operations")
        self.stems = validate.boolean(stems, "stems")
        self.ambiguous = validate.boolean(ambiguous, "ambiguous")
        lex = _base_lexicon()
        if self.stems:
            lex.update(_STEMS)
        if self.ambiguous:
            lex.update(_AMBIGUOUS)
        if not self.operations:
            lex = {w: c for w, c in lex.items() if c not in "+-*/"}
        # Accent-free spellings too ("funf", "dieciseis"), unless that spelling is ambiguous.
        for w, c in list(lex.items()):
            plain = _strip_accents(w)
            if plain != w and plain not in lex and (self.ambiguous or plain not in _AMBIGUOUS):
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
        """The token without surrounding whitespace and `▁`/`Ġ` markers (case kept)."""
        s = unicodedata.normalize("NFC", str(token)).strip()
        while s and s[0] in _MARKERS:
            s = s[1:].strip()
        return s

    def __call__(self, token: str) -> str | None:
        """The concept `token` names (`"8"`, `"+"`), or `None`."""
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
        """Whether `token` names a number or an operation."""
        return self(token) is not None

    def concepts(self, tokens: Iterable[str]) -> list[str | None]:
        """The concept of each token (`None` where it names none)."""
        return [self(t) for t in tokens]

    def count(self, tokens: Iterable[str], distinct: bool = False) -> int:
        """How many of `tokens` are concepts (`distinct=True`: how many different ones)."""
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
        """Per token id, an integer id of its concept (`-1`: none), length `d_vocab`."""
        concepts = self.vocab_concepts(tokenizer)
        names = {c: i for i, c in enumerate(sorted({c for c in concepts if c is not None}))}
        n = d_vocab if d_vocab is not None else len(concepts)
        index = torch.full((n,), -1, dtype=torch.long)
        for i, c in enumerate(concepts[:n]):
            if c is not None:
                index[i] = names[c]
        return index

    def vocab_mask(self, tokenizer: Any, d_vocab: int | None = None) -> Bool[torch.Tensor, "vocab"]:
        """Per token id, whether it names a concept, length `d_vocab`."""
        return self.vocab_index(tokenizer, d_vocab) >= 0
