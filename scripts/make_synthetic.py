#!/usr/bin/env python3
"""Write a small synthetic llama GGUF that llama.cpp loads: random weights (fixed seed), valid
llama metadata and a tiny SentencePiece-style vocabulary (control tokens, 256 byte tokens, then
plain pieces), so llama-quantize, llama_model_quantize and the inference code all accept it.

    make_synthetic.py OUT.gguf --layers 8 --embd 256 --ff 768 --heads 8 --kv-heads 2 --vocab 512
        [--dtype f32|f16|bf16] [--experts N --experts-used K] [--tied] [--fused-qkv]
        [--split-max-tensors N] [--arch NAME] [--seed S] [--outliers]

Tensor names, shapes and order follow llama.cpp's convert_hf_to_gguf.py for LlamaForCausalLM
(token_embd, output_norm, output, then per layer attn_norm, attn_q/k/v/output, ffn_norm,
ffn_gate/down/up, or ffn_gate_inp and ffn_*_exps with --experts). With --tied there is no
output.weight (the model reuses token_embd); with --fused-qkv one attn_qkv replaces attn_q/k/v.
--split-max-tensors writes a split model (OUT-00001-of-0000N.gguf, ...), as gguf-split does.
--arch writes the metadata under another architecture's prefix (plus the keys its hparams loader
requires) but keeps llama's tensor names: llama.cpp can then plan/quantize it, not run it. The same
arguments always give the same bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, TokenType

FTYPE = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "bf16": LlamaFileType.MOSTLY_BF16}


def vocab(n_vocab: int) -> tuple[list[bytes], list[float], list[int]]:
    """<unk> <s> </s>, the 256 byte tokens <0x00>..<0xFF>, then plain pieces ("▁a", "b", ...)."""
    if n_vocab < 3 + 256 + 1:
        raise SystemExit(f"--vocab must be at least {3 + 256 + 1} (3 control, 256 byte tokens, 1 piece)")
    tokens = [b"<unk>", b"<s>", b"</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>".encode() for b in range(256)]
    types += [TokenType.BYTE] * 256
    letters = "abcdefghijklmnopqrstuvwxyz"
    pieces: list[str] = [" " + c for c in letters] + list(letters)
    pieces += [" " + a + b for a in letters for b in letters] + [a + b for a in letters for b in letters]
    for p in pieces[: n_vocab - len(tokens)]:
        tokens.append(p.replace(" ", "\u2581").encode())
        types.append(TokenType.NORMAL)
    scores = [0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)]
    return tokens, scores, [int(t) for t in types]


def to_dtype(x: np.ndarray, dtype: str) -> tuple[np.ndarray, GGMLQuantizationType | None]:
    if dtype == "f32":
        return x.astype(np.float32), None
    if dtype == "f16":
        return x.astype(np.float16), None
    # bf16: round to nearest even like ggml's fp32 -> bf16, stored as raw uint16
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return bits.view(np.uint8).reshape(*x.shape[:-1], x.shape[-1] * 2), GGMLQuantizationType.BF16


def build(args: argparse.Namespace) -> None:
    if args.heads <= 0 or args.embd % args.heads:
        raise SystemExit(f"--embd {args.embd} must be a multiple of --heads {args.heads}")
    kv_heads = args.kv_heads or args.heads
    if args.heads % kv_heads:
        raise SystemExit(f"--heads {args.heads} must be a multiple of --kv-heads {kv_heads}")
    head_dim = args.embd // args.heads
    n_embd_kv = head_dim * kv_heads
    rng = np.random.default_rng(args.seed)

    arch = args.arch
    w = GGUFWriter(str(args.out), arch, split_max_tensors=args.split_max_tensors)
    w.add_name(args.name)
    w.add_file_type(int(FTYPE[args.dtype]))
    w.add_context_length(args.ctx)
    w.add_embedding_length(args.embd)
    w.add_block_count(args.layers)
    w.add_feed_forward_length(args.ff)
    w.add_head_count(args.heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    if arch in ("falcon", "olmo", "jais2", "gptneox", "bloom", "mpt", "phi2", "starcoder", "gpt2"):
        w.add_layer_norm_eps(1e-5)
    w.add_vocab_size(args.vocab)
    if args.experts:
        w.add_expert_count(args.experts)
        w.add_expert_used_count(args.experts_used)
    tokens, scores, types = vocab(args.vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def add(name: str, shape: tuple[int, ...], norm: bool = False) -> None:
        # numpy shape is ggml ne reversed: (n_out, n_in) for a matrix whose rows have n_in weights
        if norm:
            x = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
            w.add_tensor(name, x.astype(np.float32))  # norms stay F32, as convert_hf_to_gguf keeps them
            return
        x = rng.standard_normal(shape, dtype=np.float32) * np.float32(1.0 / np.sqrt(shape[-1]))
        if args.outliers:
            flat = x.reshape(-1)
            idx = rng.choice(flat.size, size=max(1, flat.size // 1000), replace=False)
            flat[idx] *= 20.0
        data, raw_dtype = to_dtype(x, args.dtype)
        w.add_tensor(name, data, raw_dtype=raw_dtype)

    add("token_embd.weight", (args.vocab, args.embd))
    add("output_norm.weight", (args.embd,), norm=True)
    if not args.tied:
        add("output.weight", (args.vocab, args.embd))
    for i in range(args.layers):
        add(f"blk.{i}.attn_norm.weight", (args.embd,), norm=True)
        if args.fused_qkv:
            add(f"blk.{i}.attn_qkv.weight", (args.embd + 2 * n_embd_kv, args.embd))
        else:
            add(f"blk.{i}.attn_q.weight", (args.embd, args.embd))
            add(f"blk.{i}.attn_k.weight", (n_embd_kv, args.embd))
            add(f"blk.{i}.attn_v.weight", (n_embd_kv, args.embd))
        add(f"blk.{i}.attn_output.weight", (args.embd, args.embd))
        add(f"blk.{i}.ffn_norm.weight", (args.embd,), norm=True)
        if args.experts:
            w.add_tensor(f"blk.{i}.ffn_gate_inp.weight",
                         (rng.standard_normal((args.experts, args.embd), dtype=np.float32) * 0.1).astype(np.float32))
            add(f"blk.{i}.ffn_gate_exps.weight", (args.experts, args.ff, args.embd))
            add(f"blk.{i}.ffn_down_exps.weight", (args.experts, args.embd, args.ff))
            add(f"blk.{i}.ffn_up_exps.weight", (args.experts, args.ff, args.embd))
        else:
            add(f"blk.{i}.ffn_gate.weight", (args.ff, args.embd))
            add(f"blk.{i}.ffn_down.weight", (args.embd, args.ff))
            add(f"blk.{i}.ffn_up.weight", (args.ff, args.embd))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--embd", type=int, default=256)
    p.add_argument("--ff", type=int, default=768)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=0, help="default: --heads (no GQA)")
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--dtype", choices=sorted(FTYPE), default="f32")
    p.add_argument("--experts", type=int, default=0, help="MoE: number of experts (0: dense)")
    p.add_argument("--experts-used", type=int, default=2)
    p.add_argument("--tied", action="store_true", help="no output.weight: the model reuses token_embd")
    p.add_argument("--fused-qkv", action="store_true", help="one attn_qkv.weight instead of attn_q/k/v")
    p.add_argument("--split-max-tensors", type=int, default=0, help="write a split model, N tensors a shard")
    p.add_argument("--arch", default="llama", help="architecture named in the metadata (tensor names stay llama's)")
    p.add_argument("--outliers", action="store_true", help="scale 0.1%% of weights by 20")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="synthetic")
    args = p.parse_args(argv)
    if args.experts and not 0 < args.experts_used <= args.experts:
        raise SystemExit("--experts-used must be between 1 and --experts")
    build(args)


if __name__ == "__main__":
    sys.exit(main())
