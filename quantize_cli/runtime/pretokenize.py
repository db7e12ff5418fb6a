"""llama.cpp's pre-tokenizer: the text cut into words before byte-level BPE merges them.

``tokenizer.ggml.pre`` picks a list of regexes (`PRE_TOKENIZERS`); llama.cpp's unicode.cpp runs
hand-written splitters for the gpt2, llama3 and qwen2 ones and a "collapsed" std::regex for the
others, over codepoint classes from its own Unicode table (``_unicode_flags.py``).

We write this rather than use the ``tokenizers`` package: llama.cpp's splitters are not the
Hugging Face ones (they use llama.cpp's own Unicode table and its own regex fallbacks), and
matching them exactly is the point.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import numpy as np

# unicode_cpt_flags bits (src/unicode.h)
F_UNDEFINED, F_NUMBER, F_LETTER, F_SEPARATOR = 0x1, 0x2, 0x4, 0x8
F_ACCENT, F_PUNCT, F_SYMBOL, F_CONTROL = 0x10, 0x20, 0x40, 0x80
F_WHITESPACE = 0x100

# --- pre-tokenizer regexes (llm_tokenizer_bpe in llama-vocab.cpp), by tokenizer.ggml.pre ---
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PORO = r" ?[^(\s|.,!?…。，、।۔،)]+"

PRE_TOKENIZERS: dict[str, tuple[list[str], dict[str, Any]]] = {}  # tokenizer.ggml.pre -> (regexes, flags)


def _pre(names: str, exprs: list[str], **flags: Any) -> None:
    for name in names.split():
        PRE_TOKENIZERS[name] = (exprs, flags)


_pre("default", [r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"])
_pre("llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2 jina-v5-nano", [_LLAMA3],
     ignore_merges=True, add_bos=True)
_pre("dbrx smaug-bpe", [_LLAMA3])
_pre("chatglm-bpe", [_LLAMA3], bos=None)
_pre("glm4 glm5", [_LLAMA3], bos=None, ignore_merges=True)
_pre("deepseek-coder", [r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}"])
_pre("falcon", [r"[\p{P}\$\+<=>\^~\|`]+", r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
                r"[0-9][0-9][0-9]"])
_pre("starcoder refact command-r smollm codeshell exaone minerva-7b bloom", [r"\p{N}", _GPT2])
_pre("gpt-2 phi-2 jina-es jina-de gigachat jina-v2-es jina-v2-de a.x-4.0 mellum modern-bert mpt olmo jais "
     "trillion granite-docling jina-v1-en jina-v2-code roberta-bpe", [_GPT2])
_pre("qwen2 deepseek-r1-qwen kormo f2llmv2 stablelm2 hunyuan solar-open", [_QWEN2])
_pre("poro-chat", [_PORO])
_pre("viking", [_PORO, r"\p{N}"])


# --- Unicode classes, from llama.cpp's own table -------------------------------------------------

@lru_cache(maxsize=1)
def _flags_table() -> np.ndarray:
    from ._unicode_flags import RANGES, WHITESPACE

    pairs = [p.split(":") for p in RANGES.split()]
    starts = np.array([int(s, 16) for s, _ in pairs], dtype=np.int64)
    flags = np.array([int(f, 16) for _, f in pairs], dtype=np.uint16)
    table = np.repeat(flags[:-1], np.diff(starts))  # the last entry marks the end, 0x110000
    table[list(WHITESPACE)] |= F_WHITESPACE
    return table


def codepoint_flags(text: str) -> list[int]:
    cpts = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return _flags_table()[cpts].tolist()


# --- pre-tokenizer splitters: each takes (cpts, flags, offsets) and returns new offsets ----------
# Offsets are lengths in codepoints of consecutive pieces, as in llama.cpp's unicode.cpp.

_OUT = -1  # llama.cpp's OUT_OF_RANGE codepoint


def _split_gpt2(cpts: list[int], fl: list[int], offsets: list[int]) -> list[int]:
    """unicode_regex_split_custom_gpt2: 's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"""
    out: list[int] = []
    start = 0
    for length in offsets:
        ini, end = start, start + length
        start = end

        def flags(pos: int) -> int:
            return fl[pos] if ini <= pos < end else 0

        pos = ini
        while pos < end:
            prev = pos
            cpt, f = cpts[pos], fl[pos]
            if cpt == 0x27 and pos + 1 < end:  # '
                nxt = cpts[pos + 1]
                if nxt in (0x73, 0x74, 0x6D, 0x64):  # s t m d
                    pos += 2
                    out.append(pos - prev)
                    continue
                if pos + 2 < end:
                    pair = (nxt, cpts[pos + 2])
                    if pair in ((0x72, 0x65), (0x76, 0x65), (0x6C, 0x6C)):  # re ve ll
                        pos += 3
                        out.append(pos - prev)
                        continue
            f2 = flags(pos + 1) if cpt == 0x20 else f
            if f2 & F_LETTER:
                pos += cpt == 0x20
                while f2 & F_LETTER:
                    pos += 1
                    f2 = flags(pos)
                out.append(pos - prev)
                continue
            if f2 & F_NUMBER:
                pos += cpt == 0x20
                while f2 & F_NUMBER:
                    pos += 1
                    f2 = flags(pos)
                out.append(pos - prev)
                continue
            if not (f2 & (F_WHITESPACE | F_LETTER | F_NUMBER)) and f2:
                pos += cpt == 0x20
                while not (f2 & (F_WHITESPACE | F_LETTER | F_NUMBER)) and f2:
                    pos += 1
                    f2 = flags(pos)
                out.append(pos - prev)
                continue
            n_ws = 0
            while flags(pos + n_ws) & F_WHITESPACE:
                n_ws += 1
            if n_ws > 1 and pos + n_ws < end:  # \s+(?!\S)
                pos += n_ws - 1
            elif n_ws > 0:
                pos += n_ws
            else:
                pos += 1
            out.append(pos - prev)
    return out


def _split_llama3_like(cpts: list[int], fl: list[int], offsets: list[int], max_digits: int) -> list[int]:
    """unicode_regex_split_custom_llama3 (max_digits=3) and _qwen2 (max_digits=1)."""
    out: list[int] = []
    start = 0
    for length in offsets:
        ini, end = start, start + length
        start = end

        def flags(pos: int) -> int:
            return fl[pos] if ini <= pos < end else 0

        def cpt_at(pos: int) -> int:
            return cpts[pos] if ini <= pos < end else _OUT

        pos = ini
        while pos < end:
            prev = pos
            cpt, f = cpts[pos], fl[pos]
            if cpt == 0x27 and pos + 1 < end:  # (?i:'s|'t|'re|'ve|'m|'ll|'d)
                nxt = cpts[pos + 1] | 0x20 if 0x41 <= cpts[pos + 1] <= 0x5A else cpts[pos + 1]
                if nxt in (0x73, 0x74, 0x6D, 0x64):
                    pos += 2
                    out.append(pos - prev)
                    continue
                if pos + 2 < end:
                    c2 = cpts[pos + 2] | 0x20 if 0x41 <= cpts[pos + 2] <= 0x5A else cpts[pos + 2]
                    if (nxt, c2) in ((0x72, 0x65), (0x76, 0x65), (0x6C, 0x6C)):
                        pos += 3
                        out.append(pos - prev)
                        continue
            # [^\r\n\p{L}\p{N}]?\p{L}+
            if not (cpt == 0x0D or cpt == 0x0A or f & F_NUMBER):
                if f & F_LETTER or flags(pos + 1) & F_LETTER:
                    pos += 1
                    while flags(pos) & F_LETTER:
                        pos += 1
                    out.append(pos - prev)
                    continue
            # \p{N}{1,3} (llama3) or \p{N} (qwen2)
            if f & F_NUMBER:
                ini_n = pos
                while flags(pos) & F_NUMBER:
                    pos += 1
                    if pos - ini_n >= max_digits:
                        out.append(pos - prev)
                        prev = ini_n = pos
                if pos > prev:
                    out.append(pos - prev)
                continue
            # <space>?[^\s\p{L}\p{N}]+[\r\n]*
            f2 = flags(pos + 1) if cpt == 0x20 else f
            if not (f2 & (F_WHITESPACE | F_LETTER | F_NUMBER)) and f:
                pos += cpt == 0x20
                while not (f2 & (F_WHITESPACE | F_LETTER | F_NUMBER)) and f2:
                    pos += 1
                    f2 = flags(pos)
                c2 = cpt_at(pos)
                while c2 == 0x0D or c2 == 0x0A:
                    pos += 1
                    c2 = cpt_at(pos)
                out.append(pos - prev)
                continue
            n_ws = 0
            last_rn = 0
            while flags(pos + n_ws) & F_WHITESPACE:
                c2 = cpts[pos + n_ws]
                if c2 == 0x0D or c2 == 0x0A:
                    last_rn = pos + n_ws + 1
                n_ws += 1
            if last_rn > 0:  # \s*[\r\n]+
                pos = last_rn
            elif n_ws > 1 and pos + n_ws < end:  # \s+(?!\S)
                pos += n_ws - 1
            elif n_ws > 0:  # \s+
                pos += n_ws
            else:
                pos += 1
            out.append(pos - prev)
    return out


# unicode_regex_split's "collapsed" fallback: every codepoint >= 128 becomes one byte naming its
# class, and \p{X} in the regex becomes a class of that byte plus the ASCII members.
_UCAT = {r"\p{N}": F_NUMBER, r"\p{L}": F_LETTER, r"\p{P}": F_PUNCT, r"\p{M}": F_ACCENT, r"\p{S}": F_SYMBOL,
         r"\p{Lu}": F_LETTER, r"\p{Ll}": F_LETTER, r"\p{Lt}": F_LETTER, r"\p{Lm}": F_LETTER, r"\p{Lo}": F_LETTER}
_UCAT_CPT = {F_NUMBER: "\xD1", F_LETTER: "\xD2", F_PUNCT: "\xD3", F_ACCENT: "\xD4", F_SYMBOL: "\xD5"}
_UCAT_ASCII = {F_NUMBER: "0-9", F_LETTER: "A-Za-z", F_PUNCT: r"!-#%-*,-/:-;?-@\[-\]_\{\}", F_ACCENT: "",
               F_SYMBOL: r"\$\+<->\^`\|\~"}


def _collapse_regex(expr: str) -> str:
    out = []
    inside = False
    i = 0
    while i < len(expr):
        ch = expr[i]
        if ch == "[" and (i == 0 or expr[i - 1] != "\\"):
            out.append("[")
            inside = True
        elif inside and ch == "]" and expr[i - 1] != "\\":
            out.append("]")
            inside = False
        elif expr.startswith(r"\p{", i):
            close = expr.find("}", i + 3)
            pat = expr[i:close + 1] if close != -1 and close <= i + 10 else ""
            if pat in _UCAT:
                cat = _UCAT[pat]
                body = _UCAT_CPT[cat] + _UCAT_ASCII[cat]
                out.append(body if inside else "[" + body + "]")
                i = close + 1
                continue
            out.append(ch)
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _split_regex(text: str, fl: list[int], expr: str, offsets: list[int]) -> list[int]:
    """unicode_regex_split_stl over the collapsed (or whitespace-folded) text."""
    if any(cat in expr for cat in _UCAT):
        folded = _collapsed_text(text, fl)
        pattern = re.compile(_collapse_regex(expr), re.ASCII)
    else:
        folded = "".join("\x0b" if ord(c) > 0x7F and f & F_WHITESPACE else c for c, f in zip(text, fl))
        pattern = re.compile(expr, re.ASCII)
    out: list[int] = []
    start = 0
    for length in offsets:
        seg_start = 0
        for m in pattern.finditer(folded, start, start + length):
            pos, n = m.start() - start, m.end() - m.start()
            if pos > seg_start:
                out.append(pos - seg_start)
            out.append(n)
            seg_start = pos + n
        if seg_start < length:
            out.append(length - seg_start)
        start += length
    return [n for n in out if n]  # std::regex_iterator never yields an empty match here


def _collapsed_text(text: str, fl: list[int]) -> str:
    chars = []
    for c, f in zip(text, fl):
        if ord(c) < 128:
            chars.append(c)
        elif f & F_WHITESPACE:
            chars.append("\x0b")
        else:
            chars.append(_UCAT_CPT.get(f & 0xFF, "\xD0"))
    return "".join(chars)


def pre_tokenize(text: str, exprs: list[str]) -> list[str]:
    """Split `text` into words the way llama.cpp's unicode_regex_split does for these regexes."""
    if not text:
        return []
    cpts = list(map(ord, text))
    fl = codepoint_flags(text)
    offsets = [len(cpts)]
    for expr in exprs:
        if expr == _GPT2:
            offsets = _split_gpt2(cpts, fl, offsets)
        elif expr == _LLAMA3:
            offsets = _split_llama3_like(cpts, fl, offsets, 3)
        elif expr == _QWEN2:
            offsets = _split_llama3_like(cpts, fl, offsets, 1)
        else:
            offsets = _split_regex(text, fl, expr, offsets)
    words, pos = [], 0
    for n in offsets:
        words.append(text[pos:pos + n])
        pos += n
    return words
