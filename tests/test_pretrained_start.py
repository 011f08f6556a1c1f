"""Growing a *pretrained* small model: in its first steps with the library's operator defaults (AdamW at
``ligo-fast grow``'s ``--lr`` 1e-3, no weight decay) the operator's loss must not rise above its step-0 value.

The test pretrains a tiny byte-level Llama on Python standard-library source (200 steps) and measures the grown
model's loss on a fixed held-out batch before and after each of the first operator steps, for the official default
init (``stackbert_noisy`` depth, ``rand`` width) and the function-preserving one (``lossless`` / ``lossless``), which
must also start at the small model's own loss. The head size stays 8 (4 -> 8 heads), so RoPE keeps its frequencies
and ``lossless`` is exact.
"""

from __future__ import annotations

import inspect
import json
import textwrap

import pytest
import torch
import transformers as T

import ligo_fast

SEQ, BATCH, PRETRAIN_STEPS, PRETRAIN_LR, OP_STEPS, MARGIN = 32, 8, 200, 1e-2, 5, 0.01
OPERATOR_LR = 1e-3  # ligo-fast grow --lr default
_SHAPE = dict(vocab_size=256, max_position_embeddings=64)


def _corpus() -> torch.Tensor:
    text = "".join(inspect.getsource(m) for m in (textwrap, json.decoder, json.encoder))
    return torch.tensor(list(text.encode()), dtype=torch.long)


def _batch(data: torch.Tensor, g: torch.Generator, lo: int, hi: int, n: int = BATCH) -> torch.Tensor:
    starts = torch.randint(lo, hi - SEQ, (n,), generator=g)
    return torch.stack([data[s : s + SEQ] for s in starts])


@pytest.fixture(scope="module")
def pretrained():
    data = _corpus()
    split = int(0.9 * len(data))
    small_cfg = T.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        **_SHAPE,
    )
    large_cfg = T.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        **_SHAPE,
    )
    torch.manual_seed(0)
    small = T.LlamaForCausalLM(small_cfg)
    opt = torch.optim.AdamW(small.parameters(), lr=PRETRAIN_LR, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    first = None
    for _ in range(PRETRAIN_STEPS):
        x = _batch(data, g, 0, split)
        loss = small(input_ids=x, labels=x).loss
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
        opt.zero_grad()
    held_out = _batch(data, torch.Generator().manual_seed(1), split, len(data), n=32)
    small.eval()
    with torch.no_grad():
        small_loss = small(input_ids=held_out, labels=held_out).loss.item()
    assert small_loss < first - 2.5, (first, small_loss)  # it did learn (5.6 -> about 2.0 nats per byte)
    return small, large_cfg, data, split, held_out, small_loss


@pytest.mark.parametrize("depth_init, width_init", [("stackbert_noisy", "rand"), ("lossless", "lossless")])
def test_operator_loss_does_not_rise_in_the_first_steps(pretrained, depth_init, width_init):
    small, large_cfg, data, split, held_out, small_loss = pretrained
    model = ligo_fast.grow(small, large_cfg, depth_init=depth_init, width_init=width_init, seed=0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=OPERATOR_LR, weight_decay=0)
    g = torch.Generator().manual_seed(2)

    def held_out_loss() -> float:
        model.eval()
        with torch.no_grad():
            return model(input_ids=held_out, labels=held_out).loss.item()

    losses = [held_out_loss()]
    for _ in range(OP_STEPS):
        model.train()
        x = _batch(data, g, 0, split)
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(held_out_loss())
    assert max(losses[1:]) <= losses[0] + MARGIN, losses
    if depth_init == "lossless":
        assert losses[0] == pytest.approx(small_loss, abs=1e-4), "the function-preserving init starts at the small loss"
