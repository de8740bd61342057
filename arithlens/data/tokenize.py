"""Tokenizer-derived targets: answer tokens read off `encode(prompt + answer)`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from arithlens.data.dataset import Case

@dataclass(frozen=True)
class _Item:
    """An un-tokenized problem: `core` text, answer, and metadata for the resulting cases."""

    core: str
    answer: str
    sep: str
    meta: dict[str, Any]


def _backend(tokenizer: Any) -> Any:
    """The Rust `tokenizers.Tokenizer` behind a fast HF tokenizer, or None."""
    return getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None


def _encode_many(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """`tokenizer.encode(text)` for each text, batched where possible."""
    if not texts:
        return []
    backend = _backend(tokenizer)
    if backend is not None:
        # The Rust batch call skips transformers' per-item Python overhead; it must agree
        # with `encode` (some wrappers post-process), so spot-check and fall back if not.
        out = [enc.ids for enc in backend.encode_batch(list(texts), add_special_tokens=True)]
        if all(out[i] == list(tokenizer.encode(texts[i])) for i in {0, len(texts) - 1}):
            return out
    if callable(tokenizer) and hasattr(tokenizer, "batch_decode"):
        return [list(ids) for ids in tokenizer(list(texts))["input_ids"]]
    return [list(tokenizer.encode(t)) for t in texts]


def _decode_many(tokenizer: Any, seqs: Sequence[Sequence[int]]) -> list[str]:
    """Raw decoded text of each sequence (special tokens kept, no space clean-up)."""
    if not seqs:
        return []
    seqs = [list(s) for s in seqs]
    backend = _backend(tokenizer)
    # clean_up_tokenization_spaces would shift character counts (" ." -> "."), so keep raw.
    if backend is not None:
        out = backend.decode_batch(seqs, skip_special_tokens=False)
        if out[0] == tokenizer.decode(seqs[0], clean_up_tokenization_spaces=False):
            return list(out)
    try:
        return list(tokenizer.batch_decode(seqs, clean_up_tokenization_spaces=False))
    except (AttributeError, TypeError):
        return [tokenizer.decode(s) for s in seqs]


def _encode_plain(tokenizer: Any, text: str) -> list[int]:
    """Tokens of `text` alone, without BOS/EOS."""
    try:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    except TypeError:
        return list(tokenizer.encode(text))


def _special_ids(tokenizer: Any) -> set[int]:
    return set(getattr(tokenizer, "all_special_ids", ()) or ())


def _common_prefix(x: Sequence[int], y: Sequence[int]) -> int:
    n = min(len(x), len(y))
    i = 0
    while i < n and x[i] == y[i]:
        i += 1
    return i


def _tokenize_items(tokenizer: Any, items: Sequence[_Item], per_digit: bool, labeller: Callable) -> list[Case]:
    """Turn items into cases, reading answer tokens off `encode(core + sep + answer)`."""
    specials = _special_ids(tokenizer)
    cores = list(dict.fromkeys(it.core for it in items))  # encode each distinct core once
    core_ids = dict(zip(cores, _encode_many(tokenizer, cores)))
    fulls = _encode_many(tokenizer, [it.core + it.sep + it.answer for it in items])

    # Pass 1: align each item. A plan (pids, bridge, full, j) means: answer-side tokens
    # ("tail") = bridge + full[j:], and tail token i is predicted from _context(plan, i).
    plans: list[tuple[list[int], list[int], list[int], int]] = []
    straddling: list[tuple[int, int]] = []
    for idx, (it, full) in enumerate(zip(items, fulls)):
        pids = core_ids[it.core]
        # Tokenizers that append EOS etc. put it at the end of both; it is not answer.
        n_trail = 0
        while n_trail < len(pids) and pids[-1 - n_trail] in specials:
            n_trail += 1
        if n_trail and full[len(full) - n_trail :] == pids[len(pids) - n_trail :]:
            pids, full = pids[:-n_trail], full[:-n_trail]
        k = _common_prefix(pids, full)
        plans.append((pids, [], full, k))
        if k < len(pids):
            straddling.append((idx, k))

    # A token straddles the boundary (SmolLM2: "3-5=" + "-2" -> '=-', '2'). The model is
    # asked with encode(core), so the target is the answer text inside the straddling
    # token(s), tokenized alone ("bridge"); later tokens keep their natural context.
    bridges: dict[str, list[int]] = {}
    to_decode: list[list[int]] = []
    for idx, k in straddling:
        pids, _, full, _ = plans[idx]
        to_decode += [pids] + [full[:j] for j in range(k + 1, len(full) + 1)]
    texts = iter(_decode_many(tokenizer, to_decode))
    for idx, k in straddling:
        pids, _, full, _ = plans[idx]
        core_len = len(next(texts))
        prefixes = [next(texts) for _ in range(k + 1, len(full) + 1)]
        # First token boundary at or past the end of the prompt text: tokens k..j-1 straddle it.
        j = next((k + 1 + n for n, text in enumerate(prefixes) if len(text) >= core_len), len(full))
        head = prefixes[j - k - 1][core_len:]
        if head not in bridges:
            bridges[head] = [t for t in _encode_plain(tokenizer, head) if t not in specials]
        plans[idx] = (pids, bridges[head], full, j)

    # Pass 2: token texts -> leading whitespace count w and the answer positions wanted.
    tails = [bridge + full[j:] for _, bridge, full, j in plans]
    need = sorted({t for tail in tails for t in tail})
    token_text = dict(zip(need, _decode_many(tokenizer, [[t] for t in need])))
    spans: list[range] = []
    for it, tail in zip(items, tails):
        # Leading whitespace-only tokens (SmolLM2's bare ' ') belong to the prompt.
        w = 0
        while w < len(tail) and token_text[tail[w]].strip() == "":
            w += 1
        if w == len(tail):
            raise ValueError(f"no answer token found for {it.core + it.sep + it.answer!r}")
        spans.append(range(w, len(tail) if per_digit else w + 1))

    # Pass 3: decode each prompt and target context in one batch; the length difference
    # is where the target starts in sep + answer (robust to '▁' and byte-level tokens).
    flat: list[list[int]] = []
    for plan, span in zip(plans, spans):
        flat.append(plan[0])
        flat.extend(_context(plan, i) for i in span)
    lengths = iter([len(t) for t in _decode_many(tokenizer, flat)])

    cases: list[Case] = []
    for it, plan, tail, span in zip(items, plans, tails, spans):
        base_len = next(lengths)
        rem = it.sep + it.answer
        for i in span:
            start = next(lengths) - base_len
            if not 0 <= start <= len(rem):
                raise ValueError(f"could not align answer tokens of {it.core + rem!r} (offset {start})")
            # Character index in the answer where this token's text begins (skip its spaces).
            char = start
            while char < len(rem) and rem[char].isspace():
                char += 1
            cases.append(
                Case(
                    prompt=it.core + rem[:start],
                    answer=it.answer,
                    target_str=token_text[tail[i]],
                    target_id=int(tail[i]),
                    input_ids=tuple(_context(plan, i)),
                    answer_ids=tuple(tail[i:]),
                    position=i - span.start,
                    case_type=labeller(it, char - len(it.sep)),
                    **it.meta,
                )
            )
    return cases


def _context(plan: tuple[list[int], list[int], list[int], int], i: int) -> list[int]:
    """Token ids preceding tail token `i` of an alignment plan."""
    pids, bridge, full, j = plan
    return pids + bridge[:i] if i < len(bridge) else full[: j + i - len(bridge)]
