"""Bad input gets a clear error and changes nothing."""

import pytest
import torch
import transformers as T
from _models import build, configs

import ligo_fast

NAME = "BertForMaskedLM"


@pytest.fixture
def small():
    return build(NAME, configs(NAME)[0])


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(before, model):
    after = model.state_dict()
    return sorted(before) == sorted(after) and all(torch.equal(before[k], after[k]) for k in before)


def test_shrinking_width_names_the_dimension(small):
    large = T.BertConfig(**{**configs(NAME)[1].to_dict(), "intermediate_size": 24})
    with pytest.raises(
        ValueError, match=r"width 'ffn' shrinks: .*intermediate\.dense\.weight rows has size 40 .* but 24"
    ):
        ligo_fast.grow(small, large)
    large = T.BertConfig(**{**configs(NAME)[1].to_dict(), "hidden_size": 16, "num_attention_heads": 2})
    before = _snapshot(small)
    with pytest.raises(ValueError, match="shrinks: .* has size 32 in the small model but 16"):
        ligo_fast.grow(small, large)
    assert _same(before, small)


def test_shrinking_layer_count(small):
    large = T.BertConfig(**{**configs(NAME)[1].to_dict(), "num_hidden_layers": 1})
    with pytest.raises(ValueError, match="layer count shrinks: the small model has 2 layers, the large config 1"):
        ligo_fast.grow(small, large)


def test_non_growing_axes_must_match(small):
    large = T.BertConfig(**{**configs(NAME)[1].to_dict(), "vocab_size": 70})
    with pytest.raises(ValueError, match="word_embeddings.weight rows has size 61 in the small model and 70"):
        ligo_fast.grow(small, large)


def test_family_mismatch(small):
    with pytest.raises(ValueError, match="large config is a 'roberta' config but the small model is a bert model"):
        ligo_fast.grow(small, configs("RobertaForMaskedLM")[1])
    with pytest.raises(ValueError, match="'llama' config"):
        ligo_fast.grow(small, configs("LlamaForCausalLM")[1])


def test_unknown_init_scheme_lists_valid_ones(small):
    with pytest.raises(ValueError, match="unknown depth_init 'zeros'; valid schemes: rand, rand_softmax, stackbert"):
        ligo_fast.grow(small, configs(NAME)[1], depth_init="zeros")
    with pytest.raises(ValueError, match="unknown width_init 'interlace'; valid schemes: rand, rand_softmax, sel"):
        ligo_fast.grow(small, configs(NAME)[1], width_init="interlace")


def test_interlace_with_too_many_layers(small):
    large = T.BertConfig(**{**configs(NAME)[1].to_dict(), "num_hidden_layers": 5})
    with pytest.raises(ValueError, match="can grow to at most 4 layers, not 5"):
        ligo_fast.grow(small, large, depth_init="interlace")
    ligo_fast.grow(
        small, T.BertConfig(**{**configs(NAME)[1].to_dict(), "num_hidden_layers": 4}), depth_init="interlace"
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_small_weights_name_the_tensor(small, bad):
    with torch.no_grad():
        small.bert.encoder.layer[1].intermediate.dense.weight[3, 4] = bad
    kind = "NaN" if bad != bad else "Inf"
    before = _snapshot(small)
    with pytest.raises(ValueError, match=rf"bert\.encoder\.layer\.1\.intermediate\.dense\.weight contains {kind}"):
        ligo_fast.grow(small, configs(NAME)[1])
    assert torch.equal(
        before["bert.encoder.layer.1.intermediate.dense.weight"].isnan(),
        small.bert.encoder.layer[1].intermediate.dense.weight.isnan(),
    )


def test_checkpoint_mismatch_names_the_first_problem(small):
    model = ligo_fast.grow(small, configs(NAME)[1])
    sd = model.state_dict()
    before = _snapshot(model)
    missing = dict(sd)
    del missing["bert.encoder.layer.2.fuse_width_query.coeffs_weight"]
    with pytest.raises(ValueError, match="missing key 'bert.encoder.layer.2.fuse_width_query.coeffs_weight'"):
        model.load_state_dict(missing)
    with pytest.raises(ValueError, match="unexpected key 'bert.encoder.layer.9.extra'"):
        model.load_state_dict({**sd, "bert.encoder.layer.9.extra": torch.ones(1)})
    bad = {**sd, "bert.embeddings.fuse_width_emb.coeffs_weight": torch.rand(3, 32)}
    with pytest.raises(ValueError, match=r"fuse_width_emb.coeffs_weight' has shape \(3, 32\), expected \(16, 32\)"):
        model.load_state_dict(bad)
    assert _same(before, model)
    untied = ligo_fast.grow(small, configs(NAME)[1], tie=False)
    with pytest.raises(ValueError, match="checkpoint does not fit"):
        untied.load_state_dict(sd)


def test_unsupported_class_lists_supported_ones():
    model = T.BertForTokenClassification(configs(NAME)[0])
    with pytest.raises(
        ValueError, match="BertForTokenClassification is not supported.*BertForMaskedLM.*LlamaForCausalLM"
    ):
        ligo_fast.grow(model, configs(NAME)[1])


def test_head_count_must_divide_width():
    small = build("LlamaForCausalLM", configs("LlamaForCausalLM")[0])
    large = T.LlamaConfig(**{**configs("LlamaForCausalLM")[1].to_dict(), "num_key_value_heads": 3})
    with pytest.raises(ValueError, match="num_key_value_heads=3 does not divide num_attention_heads=4"):
        ligo_fast.grow(small, large)
    bsmall = build(NAME, configs(NAME)[0])
    with pytest.raises(ValueError, match="num_attention_heads=5 does not divide hidden_size=48"):
        ligo_fast.grow(bsmall, T.BertConfig(**{**configs(NAME)[1].to_dict(), "num_attention_heads": 5}))


def test_bias_settings_must_match():
    small = build("LlamaForCausalLM", configs("LlamaForCausalLM")[0])
    large = T.LlamaConfig(**{**configs("LlamaForCausalLM")[1].to_dict(), "attention_bias": True})
    with pytest.raises(ValueError, match=r"self_attn\.q_proj\.bias exists in the large model but not in the small one"):
        ligo_fast.grow(small, large)


def test_a_bad_backend_variable_fails_at_grow_not_at_the_first_forward(monkeypatch):
    monkeypatch.setenv("LIGO_FAST_BACKEND", "bogus")
    small_cfg, large_cfg = configs("LlamaForCausalLM")
    with pytest.raises(ValueError, match="LIGO_FAST_BACKEND='bogus'"):
        ligo_fast.grow(build("LlamaForCausalLM", small_cfg), large_cfg)


def test_a_misspelt_large_config_key_is_named_with_the_closest_valid_one(caplog):
    small_cfg, large_cfg = configs("BertForMaskedLM")
    bad = T.BertConfig(**{**large_cfg.to_dict(), "hiden_size": 96})
    with caplog.at_level("WARNING", logger="ligo_fast.api"):
        ligo_fast.grow(build("BertForMaskedLM", small_cfg), bad)
    assert "'hiden_size'" in caplog.text and "did you mean 'hidden_size'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="ligo_fast.api"):
        ligo_fast.grow(build("BertForMaskedLM", small_cfg), large_cfg)
    assert "does not know" not in caplog.text  # a correct config: nothing to say


def test_a_zero_size_in_the_large_config_is_a_clear_error():
    small_cfg, large_cfg = configs("LlamaForCausalLM")
    large_cfg.num_attention_heads = 0
    with pytest.raises(ValueError, match="the large config: num_attention_heads must be a positive integer"):
        ligo_fast.grow(build("LlamaForCausalLM", small_cfg), large_cfg)
