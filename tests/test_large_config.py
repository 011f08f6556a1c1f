"""ligo_fast.large_config: a large HF config from a small one (head size, key/value groups, derived and dropped
fields, unknown keys refused with the closest name)."""

from __future__ import annotations

import logging

import pytest
import transformers as T

import ligo_fast


def _llama(**kw):
    base = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
                num_key_value_heads=2)  # fmt: skip
    return T.LlamaConfig(**{**base, **kw})


def test_more_heads_keep_the_head_size_and_the_groups():
    big = ligo_fast.large_config(_llama(), hidden_size=96, num_attention_heads=12, num_hidden_layers=3)
    assert (big.head_dim, big.num_key_value_heads, big.hidden_size, big.num_hidden_layers) == (8, 4, 96, 3)
    assert type(big) is T.LlamaConfig and big.vocab_size == 97 and big.intermediate_size == 80
    odd = ligo_fast.large_config(_llama(), hidden_size=96, num_attention_heads=8, num_key_value_heads=2)
    assert odd.head_dim == 8  # kept, where hidden_size // heads would give 12


def test_width_alone_recomputes_the_head_size_and_given_values_win():
    assert ligo_fast.large_config(_llama(), hidden_size=96).head_dim == 16  # 96 / 6 heads
    big = ligo_fast.large_config(_llama(), hidden_size=96, num_attention_heads=12, head_dim=16, num_key_value_heads=3)
    assert (big.head_dim, big.num_key_value_heads) == (16, 3)
    # the README's old {**small.to_dict(), ...} carried the small head size into a wider model silently
    assert T.LlamaConfig(**{**_llama().to_dict(), "hidden_size": 96}).head_dim == 8


def test_gemma_style_explicit_head_dim_is_kept_when_heads_grow():
    g = T.Gemma3TextConfig(vocab_size=64, hidden_size=40, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=32)  # fmt: skip
    big = ligo_fast.large_config(g, hidden_size=80, num_attention_heads=4, intermediate_size=128)
    assert (type(big), big.head_dim, big.num_key_value_heads) == (T.Gemma3TextConfig, 32, 2)
    g.layer_types = ["sliding_attention", "full_attention"]
    deep = ligo_fast.large_config(g, num_hidden_layers=3)
    assert deep.layer_types == ["sliding_attention", "sliding_attention", "full_attention"]  # each from its source


def test_quantisation_and_unknown_keys_are_dropped_without_warnings(caplog):
    small = _llama()
    small.quantization_config = {"quant_method": "gguf"}
    small.unk_token_id = 0  # a checkpoint's tokenizer id that LlamaConfig does not know
    big = ligo_fast.large_config(small, hidden_size=96, num_attention_heads=12)
    assert not hasattr(big, "quantization_config") and not hasattr(big, "unk_token_id")
    assert ligo_fast.config.unknown_config_keys(big) == []
    assert big.bos_token_id == small.bos_token_id  # tokenizer ids the class knows are kept
    with caplog.at_level(logging.WARNING):
        ligo_fast.grow(T.LlamaForCausalLM(small), big)
    assert not [r for r in caplog.records if "does not know" in r.getMessage()]


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"hiden_size": 96}, "'hiden_size' is not a LlamaConfig field; did you mean 'hidden_size'"),
        ({"num_attention_heads": 8}, "give num_key_value_heads"),  # 8 heads cannot keep groups of 3
        ({"hidden_size": 0}, "hidden_size must be a positive integer"),
    ],
)
def test_bad_changes_are_one_clear_error(changes, match):
    with pytest.raises(ValueError, match=match):
        ligo_fast.large_config(_llama(), **changes)
