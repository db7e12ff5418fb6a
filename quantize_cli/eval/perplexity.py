"""Perplexity and KL divergence over a text, as llama-perplexity measures them (its perplexity()
and kl_divergence() in tools/perplexity/perplexity.cpp), on the NumPy forward pass.

The text is tokenized with BOS as llama.cpp does and cut into chunks of n_ctx tokens; each chunk
runs from position 0 with its first token replaced by BOS (when the vocabulary adds one), and the
second half of the chunk is scored: positions n_ctx/2 .. n_ctx-2, each predicting the next token.
Three modes, as llama-perplexity's options select them:

- perplexity: running PPL per chunk and the final PPL +/- its uncertainty;
- base (`kl_base` without `kl_divergence`): the same, and every scored token's log-probabilities
  saved to llama-perplexity's base file (basefile.py);
- KL divergence (`kl_divergence` with `kl_base`): the tokens come from the base file, and the
  model's distribution is compared with the saved one token by token (stats.py).

The forward pass rounds each matmul's activations as llama.cpp's CPU backend does for the weight's
type (kernels/activations.py), so a quantized model's figures match llama-perplexity's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from ..runtime import logprobs
from .basefile import BaseFile, BaseWriter, read_base, scored_per_chunk
from .errors import EvalError
from .stats import KldAccumulator


@dataclass
class PerplexityOptions:
    """llama-perplexity's options, with its defaults (ctx_size None: 512, or the base file's)."""

    text_file: Optional[Path] = None
    ctx_size: Optional[int] = None
    chunks: int = -1
    batch_size: int = 2048
    kl_base: Optional[Path] = None
    kl_divergence: bool = False
    parse_special: bool = False
    kv_f16: bool = False
    round_activations: bool = True


@dataclass
class ChunkResult:
    index: int            # 1-based, as llama-perplexity prints it
    n_chunks: int
    seconds: float
    tokens: int           # tokens run through the model
    ppl: float            # running perplexity after this chunk
    kld: Optional[KldAccumulator] = None  # KL mode: the running sums


@dataclass
class PerplexityResult:
    model: Path
    n_ctx: int
    n_chunks: int
    n_tokens: int         # tokens scored
    seconds: float
    ppl: float
    ppl_err: Optional[float]
    chunks: List[float] = field(default_factory=list)
    kld: Optional[dict] = None        # KL mode: stats.KldAccumulator.summary()
    base_written: Optional[Path] = None
    warnings: List[str] = field(default_factory=list)

    def to_json(self) -> dict:
        doc = {"model": str(self.model), "ppl": self.ppl, "ppl_err": self.ppl_err, "n_tokens": self.n_tokens,
               "n_chunks": self.n_chunks, "n_ctx": self.n_ctx, "chunks": self.chunks,
               "seconds": round(self.seconds, 3)}
        if self.kld is not None:
            k = self.kld
            doc["kld"] = {key: k["kld"][key] for key in ("mean", "mean_err", "median", "p99", "p90", "max", "min",
                                                          "p99.9", "p95", "p10", "p5", "p1", "p0.1")}
            doc.update(same_top_p=k["same_top_p"], rms_dp=k["rms_dp"], ppl_base=k["ppl_base"],
                       ln_ppl_ratio=k["ln_ppl_ratio"], ppl_ratio=k["ppl_ratio"], dp=k["dp"])
        if self.base_written is not None:
            doc["kl_divergence_base"] = str(self.base_written)
        return doc


def tokenize_text(meta: dict, text_file: Path, parse_special: bool = False):
    """The text's tokens as llama-perplexity makes them (common_tokenize with add_special: BOS
    first when the vocabulary adds one), and the tokenizer; `meta` is the model's metadata."""
    from ..errors import PyquantizeError
    from ..formats.text import read_text
    from ..runtime.tokenizer import Tokenizer

    try:
        text = read_text(Path(text_file))  # -f as llama.cpp reads it: UTF-8, one trailing newline dropped
    except PyquantizeError as exc:
        raise EvalError(str(exc)) from None
    tok = Tokenizer(meta.get)
    tokens = tok.encode(text, add_special=True, parse_special=parse_special) if text else []
    return np.asarray(tokens, dtype=np.int64), tok


def check_batch(n_batch: int, n_ctx: int) -> None:
    if n_batch <= 0:
        raise EvalError("--batch-size must be > 0")
    if not (n_batch < n_ctx or n_batch % n_ctx == 0):
        raise EvalError(f"--batch-size {n_batch} must be below --ctx-size {n_ctx} or a multiple of it "
                        "(as llama-perplexity requires)")


class ChunkRunner:
    """One model, run chunk by chunk over a token sequence: the logits of the scored positions."""

    def __init__(self, model, n_ctx: int, add_bos: bool, bos_id: Optional[int]):
        self.model = model
        self.n_ctx = n_ctx
        self.first = n_ctx // 2
        self.n_scored = scored_per_chunk(n_ctx)
        self.add_bos = add_bos
        self.bos_id = bos_id

    def run(self, tokens: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(logits (n_scored, n_vocab) float32, targets (n_scored,)) of chunk i."""
        n_ctx = self.n_ctx
        chunk = np.array(tokens[i * n_ctx:(i + 1) * n_ctx], dtype=np.int64)
        if self.add_bos and self.bos_id is not None:
            chunk[0] = self.bos_id  # llama-perplexity puts BOS in the first position of each chunk
        # forward() names the layer where activations stop being finite; the output product is after it
        logits = self.model.forward(chunk, logits_from=self.first)[:self.n_scored]
        if not np.isfinite(logits).all():
            raise EvalError(f"non-finite logits (NaN or Inf) from the output layer ({self.model.output_name}) in chunk "
                            f"{i + 1}; the model's output weights are probably damaged")
        targets = np.asarray(tokens[i * n_ctx + self.first + 1:(i + 1) * n_ctx], dtype=np.int64)
        return logits, targets


def open_model(path: Path, opts: PerplexityOptions):
    from ..runtime.model import Model

    model = Model(path)
    model.kv_f16 = opts.kv_f16
    model.act_rounding = opts.round_activations
    return model


def evaluate(model_path: Path, opts: PerplexityOptions,
             on_chunk: Optional[Callable[[ChunkResult], None]] = None,
             on_start: Optional[Callable[[int, int], None]] = None) -> PerplexityResult:
    """Run one model over the text (or the base file's tokens) in the mode the options select."""
    model_path = Path(model_path)
    if opts.kl_divergence:
        if opts.kl_base is None:
            raise EvalError("--kl-divergence needs the base model's log-probabilities: --kl-divergence-base FILE")
        return _kl_divergence(model_path, read_base(opts.kl_base), opts, on_chunk, on_start)
    return _perplexity(model_path, opts, on_chunk, on_start)


def _perplexity(model_path, opts, on_chunk, on_start) -> PerplexityResult:
    if opts.text_file is None:
        raise EvalError("give the text to measure on: -f TEXT")
    n_ctx = opts.ctx_size or 512
    if n_ctx < 4:
        raise EvalError(f"--ctx-size {n_ctx} is too small; perplexity needs at least 4 tokens per chunk")
    check_batch(opts.batch_size, n_ctx)
    model = open_model(model_path, opts)
    try:
        tokens, tok = tokenize_text(model.meta, opts.text_file, opts.parse_special)
        if len(tokens) < 2 * n_ctx:
            raise EvalError(f"{opts.text_file}: the text tokenizes to only {len(tokens)} tokens; perplexity needs at "
                            f"least {2 * n_ctx} for a context of {n_ctx} (give more text or a smaller --ctx-size)")
        warnings = []
        if n_ctx > model.cfg.n_ctx_train > 0:
            warnings.append(f"model was trained on only {model.cfg.n_ctx_train} context tokens ({n_ctx} specified)")
        n_chunk_max = len(tokens) // n_ctx
        n_chunk = n_chunk_max if opts.chunks < 0 else min(opts.chunks, n_chunk_max)
        if n_chunk < 1:
            raise EvalError("--chunks 0 leaves nothing to measure")
        runner = ChunkRunner(model, n_ctx, tok.add_bos, tok.bos_id)
        if opts.kl_base is None:
            return _run_ppl(model_path, runner, tokens, n_chunk, None, on_chunk, on_start, warnings)
        from ..formats.output import atomic_outputs

        with atomic_outputs([Path(opts.kl_base)]) as temps, open(temps[0], "wb") as f:
            writer = BaseWriter(f, n_ctx, model.cfg.n_vocab, n_chunk, tokens)
            result = _run_ppl(model_path, runner, tokens, n_chunk, writer, on_chunk, on_start, warnings)
        result.base_written = Path(opts.kl_base)
        return result
    finally:
        model.close()


def _run_ppl(model_path, runner: ChunkRunner, tokens, n_chunk, writer, on_chunk, on_start, warnings):
    t0 = time.perf_counter()
    if on_start is not None:
        on_start(n_chunk, runner.n_ctx)
    nll = nll2 = 0.0
    count = 0
    chunk_ppl: list[float] = []
    for i in range(n_chunk):
        tc = time.perf_counter()
        logits, targets = runner.run(tokens, i)
        if writer is None:
            v = logprobs.nll(logits, targets)
        else:
            rows, v = logprobs.pack(logits, targets)
            writer.write_chunk(rows)
        nll += float(v.sum())
        nll2 += float((v * v).sum())
        count += len(v)
        chunk_ppl.append(math.exp(nll / count))
        if on_chunk is not None:
            on_chunk(ChunkResult(i + 1, n_chunk, time.perf_counter() - tc, runner.n_ctx, chunk_ppl[-1]))
    mean, mean2 = nll / count, nll2 / count
    ppl = math.exp(mean)
    var = mean2 - mean * mean
    err = math.sqrt(var / (count - 1)) * ppl if var > 0 and count > 1 else None
    return PerplexityResult(model_path, runner.n_ctx, n_chunk, count, time.perf_counter() - t0, ppl, err,
                            chunk_ppl, warnings=warnings)


def check_base_fits(base: BaseFile, n_vocab: int, model_path: Path, tokens: Optional[np.ndarray] = None,
                    text_file: Optional[Path] = None, ctx_size: Optional[int] = None) -> None:
    """Refuse a base file made for another model, text or chunk size, naming the mismatch."""
    if base.n_vocab != n_vocab:
        raise EvalError(f"{base.path}: the base file's vocabulary has {base.n_vocab} tokens, {model_path} has "
                        f"{n_vocab}; KL divergence needs the same vocabulary (was it made with another model?)")
    if ctx_size is not None and ctx_size != base.n_ctx:
        raise EvalError(f"{base.path}: the base file was made with chunks of {base.n_ctx} tokens, not --ctx-size "
                        f"{ctx_size}; drop -c or pass -c {base.n_ctx}")
    if tokens is not None:
        need = base.n_ctx * base.n_chunk
        if len(tokens) < need:
            raise EvalError(f"{base.path}: the base file holds {need} tokens ({base.n_chunk} chunks of {base.n_ctx}), "
                            f"{text_file} tokenizes to only {len(tokens)}; it was made from another text")
        diff = np.flatnonzero(np.asarray(tokens[:need]) != base.tokens)
        if diff.size:
            raise EvalError(f"{base.path}: the base file's tokens differ from {text_file}'s from token {int(diff[0])} "
                            "on; it was made from another text (or another tokenizer)")


def _kl_divergence(model_path, base: BaseFile, opts, on_chunk, on_start) -> PerplexityResult:
    check_batch(opts.batch_size, base.n_ctx)
    model = open_model(model_path, opts)
    try:
        from ..runtime.tokenizer import tokenizer_from_gguf

        text_tokens = None
        if opts.text_file is not None:
            text_tokens, tok = tokenize_text(model.meta, opts.text_file, opts.parse_special)
        else:
            tok = tokenizer_from_gguf(model_path)
        check_base_fits(base, model.cfg.n_vocab, model_path, text_tokens, opts.text_file, opts.ctx_size)
        n_chunk = base.n_chunk if opts.chunks < 0 else min(opts.chunks, base.n_chunk)
        if n_chunk < 1:
            raise EvalError("--chunks 0 leaves nothing to measure")
        runner = ChunkRunner(model, base.n_ctx, tok.add_bos, tok.bos_id)
        return run_kld(model_path, runner, base, n_chunk, on_chunk, on_start)
    finally:
        model.close()


def run_kld(model_path, runner: ChunkRunner, base: BaseFile, n_chunk: int, on_chunk=None, on_start=None):
    t0 = time.perf_counter()
    if on_start is not None:
        on_start(n_chunk, runner.n_ctx)
    acc = KldAccumulator()
    chunk_ppl: list[float] = []
    for i in range(n_chunk):
        tc = time.perf_counter()
        logits, targets = runner.run(base.tokens, i)
        acc.add(logprobs.kld(logits, base.chunk(i), targets))
        chunk_ppl.append(acc.ppl()[0])
        if on_chunk is not None:
            on_chunk(ChunkResult(i + 1, n_chunk, time.perf_counter() - tc, runner.n_ctx, chunk_ppl[-1], acc))
    ppl, err = acc.ppl()
    return PerplexityResult(model_path, runner.n_ctx, n_chunk, acc.count, time.perf_counter() - t0, ppl, err,
                            chunk_ppl, kld=acc.summary())
