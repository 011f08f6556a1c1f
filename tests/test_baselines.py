"""The literature's growth baselines (ligo_fast.baselines) do what their docstrings say, on tiny Llama models."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from _models import VOCAB

import ligo_fast
from ligo_fast.baselines import BASELINES, check_baseline, grow_baseline, grown_axes


def _cfg(d: int, layers: int, heads: int, ffn: int) -> T.LlamaConfig:
    return T.LlamaConfig(
        vocab_size=VOCAB, max_position_embeddings=32, hidden_size=d, intermediate_size=ffn,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads, tie_word_embeddings=False,
    )  # fmt: skip


def _small(layers: int = 3) -> torch.nn.Module:
    torch.manual_seed(5)
    m = T.LlamaForCausalLM(_cfg(12, layers, 2, 20)).eval()
    with torch.no_grad():  # norms away from 1 so a wrong copy shows
        for n, p in m.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    return m


def _layer(model, l: int) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.model.layers[l].state_dict().items()}


def _ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))


def test_gstack_large_layer_l_is_small_layer_l_mod_L1():
    small = _small(3)
    # the exact width copy of the same small model, without depth growth: the reference for the first L1 layers
    wide = ligo_fast.materialize(
        ligo_fast.grow(small, _cfg(24, 3, 4, 40), depth_init="lossless", width_init="lossless")
    )
    g = ligo_fast.materialize(
        ligo_fast.grow(small, _cfg(24, 7, 4, 40), **(BASELINES["gstack"].options | {"width_init": "lossless"}))
    )
    for l in range(7):
        ref, got = _layer(wide, l % 3), _layer(g, l)
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0, msg=f"layer {l} {k}")
    # same width: the layers are the small model's own
    same = grow_baseline("gstack", small, _cfg(12, 6, 2, 20), seed=0)
    for l in range(6):
        for k, v in _layer(small, l % 3).items():
            torch.testing.assert_close(_layer(same, l)[k], v, rtol=0, atol=0)


def test_gstack_width_is_the_noisy_copy():
    small = _small(2)
    g = grow_baseline("gstack", small, _cfg(24, 4, 4, 40), seed=0)
    exact = ligo_fast.materialize(
        ligo_fast.grow(small, _cfg(24, 4, 4, 40), depth_init="stackbert", width_init="lossless")
    )
    w_g, w_e = g.model.layers[2].mlp.down_proj.weight, exact.model.layers[2].mlp.down_proj.weight
    assert not torch.equal(w_g, w_e)  # the noise breaks the copies' symmetry
    assert (w_g - w_e).abs().max() < 0.2 * w_e.abs().max()  # ... and stays small


def test_hypercloning_preserves_the_function_up_to_its_noise():
    small = _small(2)
    x = _ids()
    big = _cfg(24, 2, 4, 40)
    with torch.no_grad():
        ref = small(x).logits
        noisy = grow_baseline("hypercloning", small, big, seed=0).eval()(x).logits
        exact = ligo_fast.materialize(ligo_fast.grow(small, big, width_init="lossless", depth_init="lossless")).eval()
        exact = exact(x).logits
    torch.testing.assert_close(exact, ref, rtol=1e-5, atol=1e-5)
    dev = (noisy - ref).abs().max() / ref.abs().max()
    assert 0 < dev < 0.1, dev
    assert grow_baseline("hypercloning", small, big, seed=0).model.layers[1].self_attn.q_proj.weight.shape == (24, 24)


def test_llama_pro_identity_blocks_leave_the_logits_unchanged():
    small = _small(2)
    x = _ids()
    g = grow_baseline("llama_pro", small, _cfg(12, 5, 2, 20)).eval()
    with torch.no_grad():
        torch.testing.assert_close(g(x).logits, small(x).logits, rtol=1e-5, atol=1e-5)
    copies = [l for l in range(5) if g.model.layers[l].self_attn.o_proj.weight.abs().sum() > 0]
    added = [l for l in range(5) if l not in copies]
    assert len(copies) == 2 and len(added) == 3
    for l in added:  # a copy of a small block with its output projections zeroed
        assert g.model.layers[l].mlp.down_proj.weight.abs().sum() == 0
        assert g.model.layers[l].self_attn.q_proj.weight.abs().sum() > 0


def test_baselines_refuse_the_axis_they_do_not_grow_and_leave_the_small_model_alone():
    small = _small(2)
    before = {k: v.clone() for k, v in small.state_dict().items()}
    assert grown_axes(small.config, _cfg(24, 4, 4, 40)) == ("depth", "width")
    with pytest.raises(ValueError, match="'hypercloning' grows width only, but the large config grows depth"):
        check_baseline("hypercloning", small.config, _cfg(24, 4, 4, 40))
    with pytest.raises(ValueError, match="'llama_pro' grows depth only, but the large config grows width"):
        grow_baseline("llama_pro", small, _cfg(24, 4, 4, 40))
    with pytest.raises(ValueError, match="unknown baseline 'nope'"):
        grow_baseline("nope", small, _cfg(24, 4, 4, 40))
    grow_baseline("gstack", small, _cfg(24, 4, 4, 40), seed=1)
    for k, v in small.state_dict().items():
        assert torch.equal(v, before[k])
