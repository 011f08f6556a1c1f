"""The lossless start when the head size grows (4 heads of 8 -> 4 heads of 16, width 32 -> 64, 2 layers, random toy
models; CPU, seconds): how far each family's start is from the small model, and, for BERT, whether training every
operator tensor (residual off) closes the gap, against a head-count growth (8 heads of 8) as the control.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/head_size_check.py [--steps 300]

LiGO's B = [I; E] keeps the small features in place, so the first large head holds small heads 0 and 1 and attends
with their summed scores: no operator reproduces the small model exactly (the fit only shrinks the gap).
"""

from __future__ import annotations

import argparse
import logging

import torch
import transformers as T

import ligo_fast

VOCAB = 61


def configs(family: str, heads: int, head: int, layers: int = 2):
    d = heads * head
    if family == "bert":
        return T.BertConfig(vocab_size=VOCAB, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                            intermediate_size=40 * d // 32, max_position_embeddings=40)  # fmt: skip
    if family == "gpt2":
        return T.GPT2Config(vocab_size=VOCAB, n_embd=d, n_layer=layers, n_head=heads, n_positions=16)
    if family == "vit":
        return T.ViTConfig(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads, image_size=8,
                           patch_size=4, intermediate_size=40 * d // 32)  # fmt: skip
    return T.LlamaConfig(vocab_size=VOCAB, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=heads // 2, head_dim=head, intermediate_size=40 * d // 32,
                         max_position_embeddings=32)  # fmt: skip


CLASSES = {"bert": T.BertForMaskedLM, "gpt2": T.GPT2LMHeadModel, "vit": T.ViTForImageClassification,
           "llama": T.LlamaForCausalLM}  # fmt: skip


def small_model(family: str, sharpen: float = 1.0):
    torch.manual_seed(3)
    m = CLASSES[family](configs(family, 4, 8)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape))
        for name, p in m.named_parameters():  # sharper attention than random weights give
            if name.endswith(("query.weight", "key.weight")):
                p.mul_(sharpen)
    return m


def batch(family: str) -> dict:
    g = torch.Generator().manual_seed(1)
    if family == "vit":
        return {"pixel_values": torch.randn(8, 3, 8, 8, generator=g)}
    return {"input_ids": torch.randint(0, VOCAB, (8, 12), generator=g)}


def out(model, x):
    o = model(**x)
    return o.logits


def deviation(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    args = p.parse_args()
    logging.disable(logging.WARNING)  # grow() warns about the head size: expected here
    print("lossless start, 4x8 -> 4x16 heads: max |logit diff| / max |logit|")
    for family in CLASSES:
        small, x = small_model(family), batch(family)
        grown = ligo_fast.grow(small, configs(family, 4, 16), depth_init="lossless", width_init="lossless").eval()
        with torch.no_grad():
            print(f"  {family}: {deviation(out(grown, x), out(small, x)):.3f}")
    print(f"BERT, q/k weights x8 (sharper attention), every operator tensor trained {args.steps} Adam steps (lr 1e-3)")
    for heads, head in ((4, 16), (8, 8)):
        small, x = small_model("bert", sharpen=8.0), batch("bert")
        grown = ligo_fast.grow(small, configs("bert", heads, head), depth_init="lossless", width_init="lossless",
                               linear_mode="materialize").eval()  # fmt: skip
        with torch.no_grad():
            ref = out(small, x)
        opt = torch.optim.Adam([q for q in grown.parameters() if q.requires_grad], lr=1e-3)
        start = deviation(out(grown, x).detach(), ref)
        for _ in range(args.steps):
            loss = (out(grown, x) - ref).pow(2).mean() / ref.pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            print(f"  {heads}x{head}: start {start:.3f}, after the fit {deviation(out(grown, x), ref):.3f}")


if __name__ == "__main__":
    main()
