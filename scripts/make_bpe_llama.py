"""Write a small llama model with a real byte-level-BPE vocabulary and random weights.

Real llama-family BPE models are far too big for tests, so this takes the vocabulary of a GGUF
(for instance llama.cpp's models/ggml-vocab-llama-bpe.gguf or ggml-vocab-gpt-2.gguf) and puts a
tiny random llama behind it: 2 layers, n_embd 64, 4 heads / 2 KV heads, n_ff 128, tied output.
Enough to compare our imatrix and logits with llama.cpp's on BPE-tokenized text. --arch qwen2
writes the same with Q/K/V biases, which llama.cpp runs with NEOX RoPE.

    python scripts/make_bpe_llama.py VOCAB.gguf OUT.gguf [--seed 0] [--n-layer 2] [--arch qwen2]
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import gguf

    from quantize_cli.runtime.tokenizer import read_gguf_metadata

    ap = argparse.ArgumentParser()
    ap.add_argument("vocab")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-embd", type=int, default=64)
    ap.add_argument("--n-ff", type=int, default=128)
    ap.add_argument("--arch", default="llama", choices=["llama", "qwen2"], help="qwen2: Q/K/V biases, NEOX RoPE")
    args = ap.parse_args()
    meta = read_gguf_metadata(args.vocab)
    tokens = meta["tokenizer.ggml.tokens"]
    n_vocab, n_embd, n_ff, n_head, n_kv = len(tokens), args.n_embd, args.n_ff, 4, 2
    hd = n_embd // n_head
    rng = np.random.default_rng(args.seed)

    w = gguf.GGUFWriter(args.out, args.arch)
    w.add_name("bpe-llama-test")
    w.add_context_length(2048)
    w.add_embedding_length(n_embd)
    w.add_block_count(args.n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)
    w.add_tokenizer_model(meta["tokenizer.ggml.model"])
    if "tokenizer.ggml.pre" in meta:
        w.add_tokenizer_pre(meta["tokenizer.ggml.pre"])
    w.add_token_list(tokens)
    if "tokenizer.ggml.token_type" in meta:
        w.add_token_types(meta["tokenizer.ggml.token_type"])
    if "tokenizer.ggml.merges" in meta:
        w.add_token_merges(meta["tokenizer.ggml.merges"])
    for key, add in (("tokenizer.ggml.bos_token_id", w.add_bos_token_id), ("tokenizer.ggml.eos_token_id", w.add_eos_token_id)):
        if key in meta:
            add(int(meta[key]))
    if "tokenizer.ggml.add_bos_token" in meta:
        w.add_add_bos_token(bool(meta["tokenizer.ggml.add_bos_token"]))

    def mat(n_out, n_in, scale=1.0):
        return (rng.standard_normal((n_out, n_in)) * scale / np.sqrt(n_in)).astype(np.float32)

    w.add_tensor("token_embd.weight", (rng.standard_normal((n_vocab, n_embd)) * 0.05).astype(np.float32))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    for il in range(args.n_layer):
        p = f"blk.{il}."
        w.add_tensor(p + "attn_norm.weight", (1 + 0.1 * rng.standard_normal(n_embd)).astype(np.float32))
        w.add_tensor(p + "attn_q.weight", mat(n_head * hd, n_embd, 2.0))
        w.add_tensor(p + "attn_k.weight", mat(n_kv * hd, n_embd, 2.0))
        w.add_tensor(p + "attn_v.weight", mat(n_kv * hd, n_embd))
        if args.arch == "qwen2":
            for part, n in (("attn_q", n_head * hd), ("attn_k", n_kv * hd), ("attn_v", n_kv * hd)):
                w.add_tensor(p + part + ".bias", (0.5 * rng.standard_normal(n)).astype(np.float32))
        w.add_tensor(p + "attn_output.weight", mat(n_embd, n_head * hd))
        w.add_tensor(p + "ffn_norm.weight", (1 + 0.1 * rng.standard_normal(n_embd)).astype(np.float32))
        w.add_tensor(p + "ffn_gate.weight", mat(n_ff, n_embd))
        w.add_tensor(p + "ffn_up.weight", mat(n_ff, n_embd))
        w.add_tensor(p + "ffn_down.weight", mat(n_embd, n_ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {args.out}: {args.arch}, {args.n_layer} layers, n_embd {n_embd}, vocab {n_vocab} "
          f"({meta['tokenizer.ggml.model']}/{meta.get('tokenizer.ggml.pre')})")


if __name__ == "__main__":
    main()
