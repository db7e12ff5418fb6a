"""Sensitivity: how much KL divergence of the logits one unit of weighted squared error costs,
per tensor, calibrated once per model on the forward pass.

For small perturbations the KL divergence is quadratic in the change of the logits, which is
linear in the weight error, so KLD(t, type) ~= s_t * E(t, type), and errors of different tensors
add. Measuring s_t tensor by tensor costs one forward pass per tensor (211 for a 30-layer
model); instead every layer is perturbed as a group (all its matrices through a reference type,
Q4_0), and every category as a group (attn_q of every layer, ...), and the model
s[layer, category] = L[layer] * C[category] is fitted to those n_layer + n_category
measurements by alternating scaling (iterative proportional fitting, fixed 50 rounds). Tensors
outside the layers (token_embd, output) are measured alone. Cost: n_layer + n_category + 2
forward passes of `chunks` x `ctx` tokens.

The forward pass is the runtime's Model.forward on the input GGUF, with chosen weights replaced by
their quantized -> dequantized values (`_SwappedModel`). The KL divergence is runtime/logprobs.py's,
the arithmetic `perplexity --kl-divergence` and `compare` use (and llama-perplexity's): the base
logits of each chunk packed once as a base file's rows, every perturbed pass measured against them,
mean over every token of the chunk that has a next token.

This is the one place plan/ reaches runtime/ (Model, tokenizer, logprobs), imported lazily inside
calibrate(): the search needs the forward pass, a plain plan never loads it.

The BLAS runs on one thread while calibrating, so the sensitivities (and the chosen mix) do not
depend on the thread count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from kernels.gguf_compat import GGMLQuantizationType as T

from ..errors import PlanError
from .target_measure import quantized_tensor

REFERENCE_TYPE = T.Q4_0
# part of the search cache's key: sensitivities measured another way are measured again
# (1: float64 log-softmax of every row; 2: runtime/logprobs.py's packed base rows, llama-perplexity's KLD)
METHOD = 2
_LAYER = re.compile(r"^blk\.(\d+)\.(.+)$")
FIT_ROUNDS = 50


@dataclass
class Calibration:
    sensitivity: dict[str, float]  # source tensor name -> KLD per unit of weighted error
    base_error: dict[str, float]   # E(t, REFERENCE_TYPE) over the whole tensor
    group_kld: dict[str, float]    # measured KLD per group ("blk.3", "attn_q.weight", "token_embd.weight")
    n_tokens: int


def calibration_tokens(model_path: Path, text_path: Path, chunks: int, ctx: int) -> list[np.ndarray]:
    """`chunks` chunks of `ctx` tokens from the start of the text, the first token of each set
    to BOS where the model adds one (as llama-imatrix and llama-perplexity do)."""
    from ..runtime.tokenizer import tokenizer_from_gguf

    try:
        text = Path(text_path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise PlanError(f"{text_path}: cannot read the calibration text ({exc.strerror}); pass a readable --search-text FILE") from None
    tok = tokenizer_from_gguf(model_path)
    tokens = np.asarray(tok.encode(text, add_special=True), dtype=np.int64)
    if len(tokens) < ctx:
        raise PlanError(f"{text_path}: only {len(tokens)} tokens, fewer than one chunk of {ctx}; give a longer --search-text")
    n = min(chunks, len(tokens) // ctx)
    out = []
    for i in range(n):
        chunk = tokens[i * ctx:(i + 1) * ctx].copy()
        if tok.add_bos:
            chunk[0] = tok.bos_id
        out.append(chunk)
    return out


def _open_model(model_path: Path):
    from ..runtime.model import Model

    class _SwappedModel(Model):
        """The runtime's model with some weights replaced (float32, the model's own shape)."""

        swapped: dict[str, np.ndarray] = {}

        def weight(self, name: str, expert=None) -> np.ndarray:
            w = self.swapped.get(name)
            if w is None:
                return super().weight(name, expert)
            return w if expert is None else w[expert]  # a 3-D expert tensor: expert e's matrix

    model = _SwappedModel(model_path)
    model.swapped = {}
    return model


def calibrate(model_path: Path, text_path: Path, tensors: list, imatrix_of: Callable, chunks: int, ctx: int,
              on_step: Callable[[str], None] | None = None) -> Calibration:
    """tensors: (source name, TensorRef) of every tensor the search chooses a type for;
    imatrix_of(name) gives its imatrix values or None."""
    from ..runtime import logprobs
    from ..runtime.blas import set_threads

    set_threads(1)
    model = _open_model(model_path)
    try:
        token_chunks = calibration_tokens(model_path, text_path, chunks, ctx)
        # row i of a chunk's logits predicts token i + 1: every row but the last is scored
        base = [logprobs.pack(model.forward(c)[:-1], c[1:])[0] for c in token_chunks]

        def kld_with(swaps: dict[str, np.ndarray]) -> float:
            model.swapped = swaps
            try:
                return float(np.mean([logprobs.kld(model.forward(c)[:-1], b, c[1:]).kld.mean()
                                      for b, c in zip(base, token_chunks)]))
            finally:
                model.swapped = {}

        usable = [(name, ref) for name, ref in tensors
                  if ref.ne[0] % 32 == 0 and name in model.tensors]
        base_error: dict[str, float] = {}

        def swapped(name: str, ref) -> np.ndarray:
            q, err = quantized_tensor(ref, REFERENCE_TYPE, imatrix_of(name))
            base_error[name] = err
            return q.reshape(tuple(reversed([int(d) for d in ref.ne])))

        groups: dict[str, list] = {}
        for name, ref in usable:
            m = _LAYER.match(name)
            groups.setdefault(f"blk.{m.group(1)}" if m else name, []).append((name, ref))
        group_kld: dict[str, float] = {}
        for group, members in groups.items():
            if on_step:
                on_step(group)
            swaps = {name: swapped(name, ref) for name, ref in members}
            group_kld[group] = kld_with(swaps)
        categories = sorted({_LAYER.match(n).group(2) for n, _ in usable if _LAYER.match(n)})
        for cat in categories:
            if on_step:
                on_step(cat)
            members = [(n, r) for n, r in usable if _LAYER.match(n) and _LAYER.match(n).group(2) == cat]
            swaps = {}
            for name, ref in members:
                q, _ = quantized_tensor(ref, REFERENCE_TYPE, imatrix_of(name))
                swaps[name] = q.reshape(tuple(reversed([int(d) for d in ref.ne])))
            group_kld[cat] = kld_with(swaps)
            del swaps
        sensitivity = _fit(usable, base_error, group_kld, categories)
        n_tokens = sum(len(c) for c in token_chunks)
    finally:
        model.close()
    return Calibration(sensitivity, base_error, group_kld, n_tokens)


def _fit(usable: list, base_error: dict[str, float], group_kld: dict[str, float], categories: list[str]) -> dict[str, float]:
    tiny = 1e-30
    sensitivity: dict[str, float] = {}
    layer_members: dict[str, list[tuple[str, str]]] = {}
    for name, _ in usable:
        m = _LAYER.match(name)
        if m is None:  # measured alone
            sensitivity[name] = max(group_kld[name], 0.0) / max(base_error[name], tiny)
        else:
            layer_members.setdefault(f"blk.{m.group(1)}", []).append((name, m.group(2)))
    if not layer_members:
        return sensitivity
    layers = sorted(layer_members, key=lambda g: int(g[4:]))
    lf = {g: 1.0 for g in layers}
    cf = {c: 1.0 for c in categories}
    for _ in range(FIT_ROUNDS):
        for g in layers:
            pred = sum(cf[c] * base_error[n] for n, c in layer_members[g])
            lf[g] = max(group_kld[g], 0.0) / max(pred, tiny)
        for c in categories:
            pred = sum(lf[g] * base_error[n] for g in layers for n, cc in layer_members[g] if cc == c)
            cf[c] = max(group_kld[c], 0.0) / max(pred, tiny)
    for g in layers:
        for n, c in layer_members[g]:
            sensitivity[n] = lf[g] * cf[c]
    return sensitivity
