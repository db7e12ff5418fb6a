"""The vocabulary of a Hugging Face checkpoint, written as convert_hf_to_gguf.py writes it
(TextModel._set_vocab_sentencepiece and _set_vocab_gpt2): a mixin of HFSource."""

from __future__ import annotations

import json
import logging
from hashlib import sha256
from pathlib import Path
from typing import Any

import gguf

from ..errors import SourceError

logger = logging.getLogger(__name__)


def _read_json(path: Path, required: bool = True) -> Any:
    if not path.is_file():
        if required:
            raise SourceError(f"{path}: missing")
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: not valid JSON ({exc})") from None



class HFVocab:
    """Vocabulary routines; the host class provides path, arch, dims, hparams, no_vocab,
    vocab_kind and _find."""


    def _set_vocab(self, w: gguf.GGUFWriter) -> None:
        d = self.path
        has_spm, has_json = (d / "tokenizer.model").is_file(), (d / "tokenizer.json").is_file()
        if self.no_vocab:
            w.add_tokenizer_model("none")
            if self.arch != gguf.MODEL_ARCH.LLAMA:  # llama.cpp sizes a vocab-less model from this key
                w.add_vocab_size(self.dims.n_vocab)
            return
        if (d / "tekken.json").is_file() and not has_json:
            raise SourceError(f"{d}: Mistral tekken.json tokenizers are not supported; a tokenizer.json is needed")
        if not has_spm and not has_json:
            raise SourceError(
                f"{d}: no tokenizer.model or tokenizer.json; add the tokenizer files, or pass "
                f"--no-vocab to convert without a vocabulary")
        config = _read_json(d / "tokenizer_config.json", required=False) or {}
        if self.vocab_kind == "llama" and (add_prefix_space := config.get("add_prefix_space")) is not None:
            w.add_add_space_prefix(add_prefix_space)
        try:
            if has_spm:
                self._set_vocab_sentencepiece(w)
            else:
                if self.vocab_kind == "llama" and _is_llama_hf_bpe(d / "tokenizer.json"):
                    raise SourceError(
                        f"{d}: tokenizer.json holds a SentencePiece-style (byte-fallback) BPE vocabulary "
                        f"and there is no tokenizer.model; add tokenizer.model (llama.cpp reads this "
                        f"form through transformers, which we do not use)")
                self._set_vocab_gpt2(w, config)
        except ValueError as exc:  # SpecialVocab's complaints (negative ids, bad merges)
            raise SourceError(f"{d}: tokenizer files: {exc}") from None
        if self.vocab_kind == "llama":
            if self.hparams.get("vocab_size", 32000) == 32016:  # CodeLlama infill tokens
                special = gguf.SpecialVocab(d, load_merges=False, special_token_types=["prefix", "suffix", "middle", "eot"])
                for typ, tid in (("prefix", 32007), ("suffix", 32008), ("middle", 32009), ("eot", 32010)):
                    special._set_special_token(typ, tid)
                special.add_to_gguf(w, quiet=True)
            if self.hparams.get("vocab_size", 32000) == 49152:  # granite small models
                w.add_add_bos_token(False)

    def _set_vocab_sentencepiece(self, w: gguf.GGUFWriter) -> None:
        """TextModel._set_vocab_sentencepiece / _create_vocab_sentencepiece."""
        from sentencepiece import SentencePieceProcessor

        d = self.path
        spm = SentencePieceProcessor()
        try:
            spm.LoadFromFile(str(d / "tokenizer.model"))
        except (OSError, RuntimeError) as exc:
            raise SourceError(f"{d / 'tokenizer.model'}: not a SentencePiece model ({str(exc).strip()})") from None
        vocab_size = self._find(["vocab_size_per_layer_input", "vocab_size"]) or spm.vocab_size()
        tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
        scores = [-10000.0] * vocab_size
        toktypes = [gguf.TokenType.UNUSED] * vocab_size
        for i in range(min(spm.vocab_size(), vocab_size)):
            toktype = gguf.TokenType.NORMAL
            if spm.IsUnknown(i):
                toktype = gguf.TokenType.UNKNOWN
            elif spm.IsControl(i):
                toktype = gguf.TokenType.CONTROL
            elif spm.IsUnused(i):
                toktype = gguf.TokenType.UNUSED
            elif spm.IsByte(i):
                toktype = gguf.TokenType.BYTE
            tokens[i], scores[i], toktypes[i] = spm.IdToPiece(i).encode(), spm.GetScore(i), toktype
        if spm.vocab_size() > vocab_size:
            logger.warning("tokenizer.model has %d pieces, config.json vocab_size %d: the rest are dropped",
                           spm.vocab_size(), vocab_size)
        added = _read_json(d / "added_tokens.json", required=False) or {}
        for text, tid in added.items():
            if isinstance(tid, int) and 0 <= tid < vocab_size:
                tokens[tid], scores[tid], toktypes[tid] = text.encode(), -1000.0, gguf.TokenType.USER_DEFINED
        config = _read_json(d / "tokenizer_config.json", required=False) or {}
        for key, data in (config.get("added_tokens_decoder") or {}).items():
            tid, text = int(key), data["content"]
            if tid >= vocab_size:
                continue
            if data.get("special") or _looks_special(text):
                toktypes[tid] = gguf.TokenType.CONTROL
            else:
                text = text.replace("\u2581", " ")  # pre-normalize user-defined spaces
                toktypes[tid] = gguf.TokenType.USER_DEFINED
            scores[tid], tokens[tid] = -1000.0, text.encode()
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(toktypes)
        gguf.SpecialVocab(d, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)

    def _set_vocab_gpt2(self, w: gguf.GGUFWriter, config: dict) -> None:
        """TextModel._set_vocab_gpt2 / get_vocab_base, with the `tokenizers` library standing in
        for transformers' AutoTokenizer (its fast tokenizers wrap the same object)."""
        from tokenizers import Tokenizer

        d = self.path
        try:
            tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise SourceError(f"{d / 'tokenizer.json'}: cannot be read as a tokenizer ({str(exc).strip()})") from None
        vocab = tok.get_vocab(with_added_tokens=True)
        vocab_size = self.hparams.get("vocab_size", len(vocab))
        if max(vocab.values()) >= vocab_size:
            raise SourceError(
                f"{d / 'tokenizer.json'}: has token id {max(vocab.values())}, beyond config.json's "
                f"vocab_size {vocab_size}")
        pre = _bpe_pre_name(tok, d)
        reverse = {i: t for t, i in vocab.items()}
        added = tok.get_added_tokens_decoder()  # id -> AddedToken
        cleanup = config.get("clean_up_tokenization_spaces") is True
        tokens: list[str] = []
        toktypes: list[int] = []
        for i in range(vocab_size):
            if i not in reverse:
                tokens.append(f"[PAD{i}]")
                toktypes.append(gguf.TokenType.UNUSED)
                continue
            token = reverse[i]
            if i in added:
                # llama.cpp assumes CONTROL and USER_DEFINED tokens are pre-normalized
                if not added[i].normalized:
                    token = tok.decode(tok.encode(token, add_special_tokens=False).ids, skip_special_tokens=False)
                    if cleanup:
                        token = _clean_up_tokenization(token)
                if added[i].special or _looks_special(token):
                    toktypes.append(gguf.TokenType.CONTROL)
                else:
                    token = token.replace("\u2581", " ")  # pre-normalize user-defined spaces
                    toktypes.append(gguf.TokenType.USER_DEFINED)
            else:
                toktypes.append(gguf.TokenType.NORMAL)
            tokens.append(token)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(toktypes)
        gguf.SpecialVocab(d, load_merges=True).add_to_gguf(w, quiet=True)



def _looks_special(token: str) -> bool:
    """TextModel.does_token_look_special."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
            or (token.startswith("<unused") and token.endswith(">")))


def _clean_up_tokenization(text: str) -> str:
    """transformers' clean_up_tokenization, applied where tokenizer_config.json asks for it."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


def _is_llama_hf_bpe(path: Path) -> bool:
    """gguf.LlamaHfVocab's test: a byte-fallback BPE with a Sequence decoder (SentencePiece converted)."""
    tj = _read_json(path) or {}
    model = tj.get("model") or {}
    decoder = tj.get("decoder") or {}
    return model.get("type") == "BPE" and bool(model.get("byte_fallback")) and decoder.get("type") == "Sequence"


def _bpe_pre_name(tok, path: Path) -> str:
    """TextModel.get_vocab_base_pre: name the pre-tokenizer by the hash of the check text's token ids."""
    from .bpe_pre_hashes import CHKTXT, PRE_BY_HASH

    chkhsh = sha256(str(tok.encode(CHKTXT).ids).encode()).hexdigest()
    if chkhsh not in PRE_BY_HASH:
        raise SourceError(
            f"{path / 'tokenizer.json'}: BPE pre-tokenizer not recognized (chkhsh {chkhsh}); llama.cpp's "
            f"convert_hf_to_gguf.py does not know it either, so llama.cpp could not tokenize as the model does")
    return PRE_BY_HASH[chkhsh]
