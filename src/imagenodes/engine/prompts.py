"""Prompts longer than the text encoder's window: cut at a word, said in a notice.

A CLIP text encoder reads 77 tokens (T5 in FLUX: 512).  Left alone, diffusers cuts the
token ids itself and transformers logs the whole dropped text to stderr — for a long
prompt, a 100 KB warning nobody sees in a builder.  Here the prompt is cut *before*
the pipeline, at the longest prefix that fits, so the pipeline has nothing to warn
about, the records hold the text that was actually used, and the caller gets one
``PROMPT_TRUNCATED`` notice per prompt with the token counts.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from imagenodes.engine import notices as nc
from imagenodes.engine.notices import Notice
from imagenodes.engine.request import GenerationRequest

#: ``model_max_length`` above this is transformers' "no limit" sentinel (1e30).
_NO_LIMIT = 1_000_000


def _tokenizer(pipe: Any, *names: str) -> Any | None:
    """The tokenizer with the widest real window among ``names`` on ``pipe``: FLUX
    sends the prompt to CLIP (77) and T5 (512), and T5's window is what it reads."""
    found = [getattr(pipe, name, None) for name in names]
    usable = [t for t in found if t is not None and 0 < _window(t) < _NO_LIMIT]
    return max(usable, key=_window, default=None)


def _window(tokenizer: Any) -> int:
    return int(getattr(tokenizer, "model_max_length", 0) or 0)


def _count(tokenizer: Any, text: str) -> int:
    # verbose=False: transformers would log "sequence length is longer than …".
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return len(ids)


def _cut(tokenizer: Any, text: str, budget: int) -> str:
    """The longest prefix of ``text`` (ending at a word) of at most ``budget`` tokens.

    Token counts grow with the prefix, so a binary search over character positions
    needs about log2(len) tokenizer calls (≈ 11 for the 2000-character cap).
    """
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _count(tokenizer, text[:mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    kept = text[:lo]
    if lo < len(text) and not text[lo].isspace() and " " in kept:
        kept = kept[: kept.rindex(" ")]  # do not end inside a word
    return kept.rstrip()


def _fit(tokenizer: Any, text: str, field: str, notices: list[Notice]) -> str:
    budget = _window(tokenizer) - int(tokenizer.num_special_tokens_to_add())
    count = _count(tokenizer, text)
    if count <= budget:
        return text
    kept = _cut(tokenizer, text, budget)
    notices.append(
        Notice(
            nc.PROMPT_TRUNCATED,
            field,
            f"{count} tokens",
            f"{_count(tokenizer, kept)} tokens",
            f"the text encoder reads at most {_window(tokenizer)} tokens; the text after "
            f"{kept[-40:]!r} was dropped",
        )
    )
    return kept


def _fit_each(
    tokenizer: Any, value: str | list[str] | None, field: str, notices: list[Notice]
) -> str | list[str] | None:
    if value is None or isinstance(value, str):
        return None if value is None else _fit(tokenizer, value, field, notices)
    fitted: dict[str, str] = {}  # one notice per distinct prompt, not per image
    for index, text in enumerate(value):
        if text not in fitted:
            fitted[text] = _fit(tokenizer, text, f"{field}.{index}", notices)
    return [fitted[text] for text in value]


def fit_prompts(pipe: Any, req: GenerationRequest) -> tuple[GenerationRequest, list[Notice]]:
    """``req`` with every prompt cut to what ``pipe``'s text encoders read."""
    notices: list[Notice] = []
    main = _tokenizer(pipe, "tokenizer", "tokenizer_2", "tokenizer_3")
    if main is None:
        return req, notices
    # SDXL's prompt_2 goes to its second encoder (also CLIP, 77 tokens).
    second = _tokenizer(pipe, "tokenizer_2") or main
    prompt = _fit_each(main, req.prompt, "prompt", notices)
    negative = _fit_each(main, req.negative_prompt, "negative_prompt", notices)
    prompt_2 = None if req.prompt_2 is None else _fit(second, req.prompt_2, "prompt_2", notices)
    if not notices:
        return req, notices
    assert prompt is not None
    return replace(req, prompt=prompt, negative_prompt=negative, prompt_2=prompt_2), notices
