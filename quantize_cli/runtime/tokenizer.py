"""Tokenizers built from GGUF metadata, giving the token ids llama.cpp gives.

Two vocabulary kinds, as llama.cpp's src/llama-vocab.cpp implements them:

- ``tokenizer.ggml.model = llama``: SentencePiece-style. The whole text (spaces escaped to U+2581,
  a space prefixed) is split into characters, adjacent pairs are merged highest score first, and
  characters that never became a token fall back to ``<0xXX>`` byte tokens.
- ``tokenizer.ggml.model = gpt2``: byte-level BPE. A pre-tokenizer chosen by ``tokenizer.ggml.pre``
  splits the text into words (llama.cpp's hand-written splitters for gpt2/llama3/qwen2, and its
  "collapsed" std::regex for the others), each word is byte-encoded and merged by merge rank.

The pre-tokenizer (the words before BPE merges, llama.cpp's unicode.cpp) is in pretokenize.py.
"""

from __future__ import annotations

import heapq
import re
from functools import lru_cache
from typing import Any, Callable

from ..errors import SourceError
from .pretokenize import PRE_TOKENIZERS, pre_tokenize


class TokenizerError(SourceError):
    """The model's tokenizer metadata is missing or of a kind we do not support."""


# llama_token_attr (llama.h)
ATTR_UNKNOWN, ATTR_UNUSED, ATTR_NORMAL, ATTR_CONTROL = 1, 2, 4, 8
ATTR_USER_DEFINED, ATTR_BYTE, ATTR_LSTRIP, ATTR_RSTRIP = 16, 32, 128, 256
# tokenizer.ggml.token_type values -> attr
_TYPE_ATTR = {1: ATTR_NORMAL, 2: ATTR_UNKNOWN, 3: ATTR_CONTROL, 4: ATTR_USER_DEFINED, 5: ATTR_UNUSED, 6: ATTR_BYTE}

# Texts llama.cpp turns into control tokens when found in a vocabulary (EOT/EOM/EOG/FIM detection).
_CONTROL_LOOKING = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
    "_<EOT>", "[EOT]", "[EOS]", "<｜end▁of▁sentence｜>", "<end_of_utterance>", "<|eom_id|>", "<|return|>",
    "<|call|>", "<|flush|>", "<|calls|>", "</s>", "<eos>", "<turn|>",
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>",
    "<|prefix|>", "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
    "<|code_suffix|>", "<|suffix|>", "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>",
    "▁<MID>", "<|code_middle|>", "<|middle|>", "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]",
    "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", "<|file_sep|>",
}

_SPM_BOUNDARY = re.compile("[^\u2581]\u2581")  # a non-space followed by the escaped space
_SPM_WORD = re.compile("\u2581*[^\u2581]*")  # runs of U+2581 with the word after them


@lru_cache(maxsize=1)
def _byte_encoder() -> list[str]:
    """GPT-2's bytes_to_unicode (unicode_byte_to_utf8_map)."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    enc = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in enc:
            enc[b] = chr(256 + n)
            n += 1
    return [enc[b] for b in range(256)]


# --- the tokenizer ---------------------------------------------------------------------------------

class Tokenizer:
    """llama.cpp's tokenizer for one vocabulary. ``encode(text)`` is llama_tokenize."""

    def __init__(self, get: Callable[[str, Any], Any]):
        model = get("tokenizer.ggml.model", None)
        tokens = get("tokenizer.ggml.tokens", None)
        if model is None or tokens is None:
            raise TokenizerError("the model has no tokenizer metadata (tokenizer.ggml.model / tokenizer.ggml.tokens); "
                                 "convert it again with its tokenizer")
        self.model = str(model)
        self.pre = get("tokenizer.ggml.pre", None)
        self.tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        n = len(self.tokens)
        self.token_to_id = {t: i for i, t in enumerate(self.tokens)}
        scores = get("tokenizer.ggml.scores", None)
        self.scores = [float(s) for s in scores] if scores is not None else [0.0] * n
        types = get("tokenizer.ggml.token_type", None)
        self.attrs = [_TYPE_ATTR.get(int(t), 0) for t in types] if types is not None else [ATTR_NORMAL] * n
        self.ignore_merges = False
        self.add_space_prefix = False
        self.add_bos = False
        self.add_eos = False
        self.merges: dict[tuple[str, str], int] = {}

        if self.model == "llama":
            bos, eos = 1, 2
            self.add_space_prefix = True
            self.add_bos = True
            self.exprs: list[str] = []
        elif self.model == "gpt2":
            bos, eos = 11, 11
            merges = get("tokenizer.ggml.merges", None)
            if merges is None:
                raise TokenizerError("the model's gpt2 tokenizer has no merges (tokenizer.ggml.merges)")
            for rank, word in enumerate(merges):
                pos = word.find(" ", 1)
                pair = (word[:pos], word[pos + 1:]) if pos != -1 else ("", "")
                self.merges.setdefault(pair, rank)  # std::map::emplace keeps the first
            pre = self.pre or "default"
            if pre not in PRE_TOKENIZERS:
                raise TokenizerError(f"pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not supported; supported: "
                                     + ", ".join(sorted(PRE_TOKENIZERS)))
            self.exprs, flags = PRE_TOKENIZERS[pre]
            self.ignore_merges = flags.get("ignore_merges", False)
            self.add_bos = flags.get("add_bos", False)
            if "bos" in flags:
                bos = flags["bos"]
        else:
            raise TokenizerError(f"tokenizer model {self.model!r} is not supported (only 'llama' SentencePiece "
                                 "and 'gpt2' byte-level BPE)")

        def special(key: str, default: int | None) -> int | None:
            if default is not None and default >= n:
                default = None
            value = get(key, None)
            if value is None or int(value) >= n:
                return default
            return int(value)

        self.bos_id = special("tokenizer.ggml.bos_token_id", bos)
        self.eos_id = special("tokenizer.ggml.eos_token_id", eos)
        self.add_space_prefix = bool(get("tokenizer.ggml.add_space_prefix", self.add_space_prefix))
        self.add_bos = bool(get("tokenizer.ggml.add_bos_token", self.add_bos))
        self.add_eos = bool(get("tokenizer.ggml.add_eos_token", self.add_eos))

        for i, text in enumerate(self.tokens):
            if text in _CONTROL_LOOKING:  # llama.cpp adds CONTROL to end-of-generation/FIM-looking tokens
                self.attrs[i] |= ATTR_CONTROL
        # the special tokens cache: longest first (llama.cpp's std::sort is not stable; ties rarely matter)
        self.special_ids = sorted(
            (i for i, a in enumerate(self.attrs) if a & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)),
            key=lambda i: -len(self.tokens[i].encode()))
        name = str(get("general.name", "") or "").lower()
        if "phi-3" in name or "phi3" in name:
            for i in self.special_ids:
                self.attrs[i] |= ATTR_RSTRIP
            for t, on in (("</s>", True), ("<unk>", False), ("<s>", False), ("<|endoftext|>", False)):
                if t in self.token_to_id:
                    i = self.token_to_id[t]
                    self.attrs[i] = self.attrs[i] | ATTR_RSTRIP if on else self.attrs[i] & ~ATTR_RSTRIP
        self._bpe_cache: dict[str, list[int]] = {}
        # SPM merges never join a symbol ending in a non-space to one starting with U+2581 when no
        # token holds such a pair; the text can then be cut before each word's U+2581 and each word
        # tokenized (and cached) on its own, with the same result as the whole text at once.
        self._spm_words = self.model == "llama" and not any(
            _SPM_BOUNDARY.search(t) for t in self.tokens)
        self._spm_cache: dict[str, list[int]] = {}

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    # -- llama_vocab::impl::tokenize
    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        fragments: list[str | int] = [text] if text else []
        fragments = self._partition_special(fragments, parse_special)
        out: list[int] = []
        if self.model == "llama":
            if add_special and self.add_bos:
                out.append(self.bos_id)
            prev_special = True
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                    prev_special = True
                    continue
                piece = (" " if self.add_space_prefix and prev_special else "") + frag
                self._spm(piece.replace(" ", "\u2581"), out)
                prev_special = False
        else:
            if add_special and self.add_bos:
                out.append(self.bos_id)
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                else:
                    self._bpe(frag, out)
        if add_special and self.add_eos:
            out.append(self.eos_id)
        return out

    def _partition_special(self, fragments: list[str | int], parse_special: bool) -> list[str | int]:
        """tokenizer_st_partition: cut special-token texts out of the raw text, longest first."""
        for sid in self.special_ids:
            attr = self.attrs[sid]
            if not parse_special and attr & (ATTR_CONTROL | ATTR_UNKNOWN):
                continue
            stext = self.tokens[sid]
            if not any(isinstance(f, str) and stext in f for f in fragments):
                continue
            new: list[str | int] = []
            for frag in fragments:
                if isinstance(frag, int) or stext not in frag:
                    new.append(frag)
                    continue
                rest = frag
                while True:
                    at = rest.find(stext)
                    if at == -1:
                        if rest:
                            new.append(rest)
                        break
                    left = rest[:at]
                    if attr & ATTR_LSTRIP:
                        left = left.rstrip(" \t\n\v\f\r")
                    if left:
                        new.append(left)
                    new.append(sid)
                    rest = rest[at + len(stext):]
                    if attr & ATTR_RSTRIP:
                        rest = rest.lstrip(" \t\n\v\f\r")
            fragments = new
        return fragments

    def byte_to_token(self, b: int) -> int:
        if self.model == "llama":
            tid = self.token_to_id.get(f"<0x{b:02X}>")
            if tid is None:
                tid = self.token_to_id.get(chr(b))
        else:
            tid = self.token_to_id.get(_byte_encoder()[b])
        if tid is None:
            raise TokenizerError(f"the vocabulary has no token for byte 0x{b:02X} (no byte fallback)")
        return tid

    def _spm(self, text: str, out: list[int]) -> None:
        if not self._spm_words:
            self._spm_text(text, out)
            return
        cache = self._spm_cache
        for word in _SPM_WORD.findall(text):
            ids = cache.get(word)
            if ids is None:
                ids = []
                self._spm_text(word, ids)
                if len(cache) < 200_000:
                    cache[word] = ids
            out.extend(ids)

    # -- llm_tokenizer_spm_session::tokenize
    def _spm_text(self, text: str, out: list[int]) -> None:
        n = len(text)
        if n == 0:
            return
        start = list(range(n))
        size = [1] * n
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        vocab, scores = self.token_to_id, self.scores
        queue: list[tuple[float, int, int, int]] = []

        def try_add(left: int, right: int) -> None:
            if left == -1 or right == -1:
                return
            tid = vocab.get(text[start[left]:start[left] + size[left] + size[right]])
            if tid is None:
                return
            # highest score first, then leftmost (llm_bigram_spm::comparator)
            heapq.heappush(queue, (-scores[tid], left, right, size[left] + size[right]))

        for i in range(1, n):
            try_add(i - 1, i)
        while queue:
            _, left, right, total = heapq.heappop(queue)
            if size[left] == 0 or size[right] == 0 or size[left] + size[right] != total:
                continue  # one side was merged since this pair was queued
            size[left] += size[right]
            size[right] = 0
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            try_add(prev[left], left)
            try_add(left, nxt[left])
        i = 0
        while i != -1:
            piece = text[start[i]:start[i] + size[i]]
            tid = vocab.get(piece)
            if tid is not None:
                out.append(tid)
            else:  # a character that is no token: byte fallback
                out.extend(self.byte_to_token(b) for b in piece.encode("utf-8"))
            i = nxt[i]

    # -- llm_tokenizer_bpe_session::tokenize
    def _bpe(self, text: str, out: list[int]) -> None:
        enc = _byte_encoder()
        cache = self._bpe_cache
        for word in pre_tokenize(text, self.exprs):
            ids = cache.get(word)
            if ids is None:
                ids = self._bpe_word("".join(enc[b] for b in word.encode("utf-8")))
                if len(cache) < 200_000:
                    cache[word] = ids
            out.extend(ids)

    def _bpe_word(self, word: str) -> list[int]:
        vocab = self.token_to_id
        if self.ignore_merges and word in vocab:
            return [vocab[word]]
        syms = list(word)
        n = len(syms)
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        merges = self.merges
        queue: list[tuple[int, int, int, str]] = []

        def add(left: int, right: int) -> None:
            if left == -1 or right == -1:
                return
            rank = merges.get((syms[left], syms[right]))
            if rank is not None:
                heapq.heappush(queue, (rank, left, right, syms[left] + syms[right]))

        for i in range(1, n):
            add(i - 1, i)
        while queue:
            _, left, right, merged = heapq.heappop(queue)
            if not syms[left] or not syms[right] or syms[left] + syms[right] != merged:
                continue  # outdated pair
            syms[left] = merged
            syms[right] = ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            add(prev[left], left)
            add(left, nxt[left])
        ids: list[int] = []
        i = 0
        while i != -1:
            sym = syms[i]
            tid = vocab.get(sym)
            if tid is not None:
                ids.append(tid)
            else:
                # llama.cpp looks each UTF-8 byte of the encoded symbol up as a one-byte string, so
                # only ASCII ones can be found; the others are silently dropped, as there.
                for b in sym.encode("utf-8"):
                    if b < 0x80 and chr(b) in vocab:
                        ids.append(vocab[chr(b)])
            i = nxt[i]
        return ids

    def decode_piece(self, tid: int) -> str:
        """The token's text, for messages (not a full detokenizer)."""
        return self.tokens[tid]


def tokenizer_from_source(source) -> Tokenizer:
    """A Tokenizer from a quantize_cli.sources.Source (GGUF metadata)."""
    return Tokenizer(source.kv_value)


def read_gguf_metadata(path) -> dict[str, Any]:
    """All key/value pairs of a GGUF file, decoded (one pass; well under a second for a
    150k-token vocabulary with its merges, where the gguf package's reader takes tens of seconds)."""
    return read_gguf(path)[0]


def read_gguf(path) -> tuple[dict[str, Any], list[tuple[str, tuple[int, ...], int, int]], int]:
    """(metadata, tensor infos as (name, ne, ggml type, offset), absolute data offset) of a GGUF,
    through the project's one-pass GGUF reader (quantize_cli.formats.gguf.read_gguf_layout)."""
    from ..formats.gguf import check_metadata_types, read_gguf_layout

    try:
        layout = read_gguf_layout(path)
        check_metadata_types(layout.kv, path=path)
    except SourceError as exc:
        raise TokenizerError(str(exc)) from None
    return {kv.key: kv.get() for kv in layout.kv}, layout.tensor_infos, layout.data_offset


def tokenizer_from_gguf(path) -> Tokenizer:
    """A Tokenizer straight from a GGUF file's metadata (vocab-only files too)."""
    meta = read_gguf_metadata(path)
    return Tokenizer(meta.get)
