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
        """The family's set_vocab (hf_families.Family.vocab names the routine):
        llama        LlamaModel.set_vocab: add_prefix_space, then SentencePiece, else byte-level BPE
        spm_or_gpt2  Qwen2Model.set_vocab: SentencePiece if tokenizer.model is there, else BPE
        gpt2         TextModel.set_vocab: byte-level BPE from tokenizer.json
        gemma2       Gemma2Model.set_vocab: SentencePiece, add_space_prefix false
        gemma3       Gemma3Model.set_vocab: as gemma2 with tokenizer.model, else BPE
        phi3         Phi3MiniModel.set_vocab: its own SentencePiece reading, or BPE for GPT2Tokenizer"""
        d, kind = self.path, self.vocab_kind
        has_spm, has_json = (d / "tokenizer.model").is_file(), (d / "tokenizer.json").is_file()
        if self.no_vocab:
            w.add_tokenizer_model("none")
            if f"{self.arch_name}.vocab_size" not in w.kv_data[0]:  # llama.cpp sizes a vocab-less model from this key
                w.add_vocab_size(self.dims.n_vocab)
            return
        if kind == "llama" and (d / "tekken.json").is_file() and not has_json:
            raise SourceError(f"{d}: Mistral tekken.json tokenizers are not supported; a tokenizer.json is needed")
        config = _read_json(d / "tokenizer_config.json", required=False) or {}
        wants_spm = {"llama": has_spm, "spm_or_gpt2": has_spm, "gpt2": False, "gemma2": True,
                     "gemma3": has_spm, "phi3": config.get("tokenizer_class") != "GPT2Tokenizer"}[kind]
        if kind in ("llama", "spm_or_gpt2", "gemma3"):
            need = None if has_spm or has_json else "tokenizer.model or tokenizer.json"
        else:
            need = None if (has_spm if wants_spm else has_json) else ("tokenizer.model" if wants_spm else "tokenizer.json")
        if need is not None:
            raise SourceError(
                f"{d}: no {need}; add the tokenizer files, or pass --no-vocab to convert without a vocabulary")
        if kind == "llama" and (add_prefix_space := config.get("add_prefix_space")) is not None:
            w.add_add_space_prefix(add_prefix_space)
        try:
            if wants_spm:
                self._set_vocab_sentencepiece(w, phi3=kind == "phi3")
                if kind in ("gemma2", "gemma3"):
                    w.add_add_space_prefix(False)
            else:
                if kind == "llama" and _is_llama_hf_bpe(d / "tokenizer.json"):
                    raise SourceError(
                        f"{d}: tokenizer.json holds a SentencePiece-style (byte-fallback) BPE vocabulary "
                        f"and there is no tokenizer.model; add tokenizer.model (llama.cpp reads this "
                        f"form through transformers, which we do not use)")
                self._set_vocab_gpt2(w, config)
        except ValueError as exc:  # SpecialVocab's complaints (negative ids, bad merges)
            raise SourceError(f"{d}: tokenizer files: {exc}") from None
        if kind == "llama":
            if self.hparams.get("vocab_size", 32000) == 32016:  # CodeLlama infill tokens
                special = SpecialVocab(d, load_merges=False, special_token_types=["prefix", "suffix", "middle", "eot"])
                for typ, tid in (("prefix", 32007), ("suffix", 32008), ("middle", 32009), ("eot", 32010)):
                    special._set_special_token(typ, tid)
                special.add_to_gguf(w, quiet=True)
            if self.hparams.get("vocab_size", 32000) == 49152:  # granite small models
                w.add_add_bos_token(False)

    def _set_vocab_sentencepiece(self, w: gguf.GGUFWriter, phi3: bool = False) -> None:
        """TextModel._set_vocab_sentencepiece / _create_vocab_sentencepiece; with `phi3`,
        Phi3MiniModel.set_vocab's variant (added tokens from tokenizer_config.json and
        tokenizer.json are USER_DEFINED unless marked special, taken as they are)."""
        from sentencepiece import SentencePieceProcessor

        d = self.path
        spm = SentencePieceProcessor()
        try:
            spm.LoadFromFile(str(d / "tokenizer.model"))
        except (OSError, RuntimeError) as exc:
            raise SourceError(f"{d / 'tokenizer.model'}: not a SentencePiece model ({str(exc).strip()})") from None
        if phi3:
            vocab_size = self.hparams.get("vocab_size", spm.vocab_size())
        else:
            vocab_size = self._find(["vocab_size_per_layer_input", "vocab_size"]) or spm.vocab_size()
        tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
        scores = [-10000.0] * vocab_size
        toktypes = [gguf.TokenType.UNUSED] * vocab_size
        if phi3 and spm.vocab_size() > vocab_size:
            raise SourceError(f"{d / 'tokenizer.model'}: {spm.vocab_size()} pieces, more than config.json's vocab_size {vocab_size}")
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
        added_tokens = [(int(key), data) for key, data in (config.get("added_tokens_decoder") or {}).items()]
        if phi3:
            tj = _read_json(d / "tokenizer.json", required=False) or {}
            added_tokens += [(int(data["id"]), data) for data in tj.get("added_tokens") or []]
        for tid, data in added_tokens:
            text = data["content"]
            if tid >= vocab_size:
                if phi3:
                    raise SourceError(f"{d}: added token {text!r} has id {tid}, beyond config.json's vocab_size {vocab_size}")
                continue
            if phi3:
                toktypes[tid] = gguf.TokenType.CONTROL if data.get("special") else gguf.TokenType.USER_DEFINED
            elif data.get("special") or _looks_special(text):
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
        SpecialVocab(d, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)

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
        SpecialVocab(d, load_merges=True).add_to_gguf(w, quiet=True)



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


class SpecialVocab(gguf.SpecialVocab):
    """gguf.SpecialVocab as llama.cpp's own gguf-py has it (newer than the gguf release we depend
    on), so special tokens and add_*_token flags come out as convert_hf_to_gguf.py writes them:
    - a ByteLevel post-processor means no BOS/EOS is added (unless something says otherwise);
    - flags found in tokenizer.json's post-processor win over tokenizer_config.json's add_*_token;
    - a TemplateProcessing's leading special token that is neither bos_token nor cls_token fills
      whichever of them is unset;
    - Lowercase/StripAccents normalizers give tokenizer.ggml.normalizer.* flags."""

    def __init__(self, *args, **kwargs):
        self.normalizer_lowercase: bool | None = None
        self.normalizer_strip_accents: bool | None = None
        super().__init__(*args, **kwargs)

    def add_to_gguf(self, gw: gguf.GGUFWriter, quiet: bool = False) -> None:
        super().add_to_gguf(gw, quiet=quiet)
        if self.normalizer_lowercase is not None:
            gw.add_bool("tokenizer.ggml.normalizer.lowercase", self.normalizer_lowercase)
        if self.normalizer_strip_accents is not None:
            gw.add_bool("tokenizer.ggml.normalizer.strip_accents", self.normalizer_strip_accents)

    def _parse_normalizer(self, normalizer: dict) -> None:
        kind = normalizer.get("type")
        if kind == "Lowercase":
            self.normalizer_lowercase = True
        elif kind == "StripAccents":
            self.normalizer_strip_accents = True
        elif kind == "BertNormalizer":
            if "lowercase" in normalizer:
                self.normalizer_lowercase = normalizer["lowercase"]
            if "strip_accents" in normalizer:
                self.normalizer_strip_accents = normalizer["strip_accents"]
        elif kind == "Sequence":
            for part in normalizer.get("normalizers", []):
                self._parse_normalizer(part)

    def _try_load_from_tokenizer_json(self, path: Path) -> bool:
        tokenizer = None
        added_tokens: Any = {}
        tokenizer_file = path / "tokenizer.json"
        if tokenizer_file.is_file():
            with open(tokenizer_file, encoding="utf-8") as f:
                tokenizer = json.load(f)
            if self.load_merges:
                merges = tokenizer.get("model", {}).get("merges")
                if isinstance(merges, list) and merges:
                    if isinstance(merges[0], str):
                        self.merges = merges
                    elif isinstance(merges[0], list) and len(merges[0]) == 2 and isinstance(merges[0][0], str):
                        # pairs (transformers >= 4.45): spaces inside a part are written as U+0120's neighbour
                        self.merges = [" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part)
                                                for part in pair) for pair in merges]
                    else:
                        raise ValueError("Unknown tokenizer merges format")
            if normalizer := tokenizer.get("normalizer"):
                self._parse_normalizer(normalizer)
            added_tokens = tokenizer.get("added_tokens", {})
        tokenizer_config = None
        config_file = path / "tokenizer_config.json"
        if config_file.is_file():
            with open(config_file, encoding="utf-8") as f:
                tokenizer_config = json.load(f)
        if tokenizer:
            self._read_post_processor(tokenizer, tokenizer_config)
        if not tokenizer_config:
            return True
        template_alt = None
        if (path / "chat_template.jinja").is_file():
            template_alt = (path / "chat_template.jinja").read_text(encoding="utf-8")
            if extra := list((path / "additional_chat_templates").glob("*.jinja")):
                template_alt = [{"name": "default", "template": template_alt}] + [
                    {"name": p.stem, "template": p.read_text(encoding="utf-8")} for p in extra]
        elif (path / "chat_template.json").is_file():
            with open(path / "chat_template.json", encoding="utf-8") as f:
                template_alt = json.load(f).get("chat_template")
        template = tokenizer_config.get("chat_template", template_alt)
        if template is None or isinstance(template, (str, list)):
            self.chat_template = template
        for typ in self.special_token_types:
            add_entry = tokenizer_config.get(f"add_{typ}_token")
            if isinstance(add_entry, bool) and typ not in self.add_special_token:
                self.add_special_token[typ] = add_entry
            entry = tokenizer_config.get(f"{typ}_token")
            if isinstance(entry, dict):
                entry = entry.get("content")
            if not isinstance(entry, str):
                continue
            self._set_special_token(typ, next((t.get("id") for t in added_tokens if t.get("content") == entry), None))
        return True

    def _read_post_processor(self, tokenizer: dict, config: dict | None) -> None:
        """Which special tokens the tokenizer's post-processor adds (a crude reading of simple
        templates, as gguf-py's)."""
        cfg = config or {}
        bos, cls, eos, sep = (cfg.get(k) for k in ("bos_token", "cls_token", "eos_token", "sep_token"))
        if not bos and cls and config:
            config["bos_token"] = bos = cls
        if not eos and sep and config:
            config["eos_token"] = eos = sep
        post = tokenizer.get("post_processor")
        if not post:
            return
        for proc in post.get("processors", [post]):
            kind = proc.get("type")
            if kind == "ByteLevel":
                self.add_special_token.setdefault("bos", False)
                self.add_special_token.setdefault("eos", False)
            elif kind == "RobertaProcessing":
                self.add_special_token.update(bos=True, eos=True, sep=True)
                if not cls and config:
                    config["cls_token"] = cls = proc.get("cls", [bos])[0]
                if not sep and config:
                    config["sep_token"] = sep = proc.get("sep", [eos])[0]
            elif kind == "TemplateProcessing":
                single, pair = proc.get("single", []), proc.get("pair", [])
                first = last = None
                if len(single) > 1:
                    if first := single[0].get("SpecialToken", {}).get("id"):
                        if not config:
                            bos = first
                        elif first not in (bos, cls):
                            if not bos:
                                config["bos_token"] = bos = first
                            if not cls:
                                config["cls_token"] = cls = first
                        self.add_special_token["bos"] = first in (bos, cls)
                    if last := single[-1].get("SpecialToken", {}).get("id"):
                        if not config:
                            eos = last
                        elif last != eos:
                            if "eot" not in self.special_token_types:
                                self.special_token_types = tuple(self.special_token_types) + ("eot",)
                                config["eot_token"] = eos
                            elif "eom" not in self.special_token_types:
                                self.special_token_types = tuple(self.special_token_types) + ("eom",)
                                config["eom_token"] = eos
                            config["eos_token"] = eos = last
                        self.add_special_token["eos"] = last == eos
                if pair:
                    start = 1 if first and pair[0].get("SpecialToken", {}).get("id") == first else 0
                    stop = -1 if last and pair[-1].get("SpecialToken", {}).get("id") == last else None
                    pair = pair[slice(start, stop)]
                    if pair and pair[0].get("Sequence", {}).get("id") == "A" and pair[-1].get("Sequence", {}).get("id") == "B":
                        middle = pair[1:-1]
                        if middle:
                            add_sep = False
                            if (entry := middle[0].get("SpecialToken", {}).get("id")) and entry in (sep, eos) and not last:
                                add_sep = True
                            if len(middle) == 2 and (entry := middle[1].get("SpecialToken", {}).get("id")) and entry in (sep, eos):
                                add_sep = True
                            self.add_special_token["sep"] = add_sep
                            if add_sep and not sep and config:
                                config["sep_token"] = eos
