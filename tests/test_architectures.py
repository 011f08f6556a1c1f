"""Every supported Hugging Face class grows, materialises and round-trips (tiny configs, no downloads)."""

import pytest
import torch
import transformers as T
from _models import build, configs, inputs, main_output

import ligo_fast

CLASSES = [
    "BertForMaskedLM",
    "BertModel",
    "BertForSequenceClassification",
    "RobertaModel",
    "RobertaForMaskedLM",
    "GPT2LMHeadModel",
    "GPT2Model",
    "LlamaForCausalLM",
    "LlamaModel",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Qwen3Model",
    "Gemma3ForCausalLM",
    "Gemma3TextModel",
    "ViTModel",
    "ViTForImageClassification",
]


@pytest.mark.parametrize("name", CLASSES)
def test_grow_forward_equals_materialized(name):
    small_cfg, large_cfg = configs(name)
    small = build(name, small_cfg)
    before = {k: v.clone() for k, v in small.state_dict().items()}
    model = ligo_fast.grow(small, large_cfg, depth_init="rand", width_init="rand", residual=True).eval()
    x = inputs(name)
    out = main_output(model(**x))
    assert out.shape[-1] == (large_cfg.vocab_size if hasattr(model.large, "lm_head") else out.shape[-1])
    out.float().pow(2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(n.startswith(("op.width__", "op.depth__", "op.residual__")) for n in grads)
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads.values()) >= 0.9 * len(grads)
    assert not any(p.requires_grad for p in model.large.parameters())
    big = ligo_fast.materialize(model)
    assert type(big) is type(small)
    with torch.no_grad():
        torch.testing.assert_close(main_output(big(**x)), out.detach(), rtol=0, atol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())


@pytest.mark.parametrize("name", CLASSES)
def test_identity_growth_reproduces_the_small_model_exactly(name):
    small_cfg, _ = configs(name)
    small = build(name, small_cfg)
    model = ligo_fast.grow(small, small_cfg, depth_init="stackbert", residual=False).eval()
    x = inputs(name)
    with torch.no_grad():
        assert torch.equal(main_output(model(**x)), main_output(small(**x)))
        assert torch.equal(main_output(ligo_fast.materialize(model)(**x)), main_output(small(**x)))


@pytest.mark.parametrize(
    "name", ["LlamaForCausalLM", "GPT2LMHeadModel", "ViTForImageClassification", "BertModel", "Gemma3ForCausalLM"]
)
def test_save_pretrained_round_trip(name, tmp_path):
    small_cfg, large_cfg = configs(name)
    big = ligo_fast.materialize(ligo_fast.grow(build(name, small_cfg), large_cfg, depth_init="rand")).eval()
    big.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    again = getattr(T, name).from_pretrained(tmp_path).eval()
    x = inputs(name)
    with torch.no_grad():
        assert torch.equal(main_output(again(**x)), main_output(big(**x)))


@pytest.mark.parametrize("kv", [(2, 4), (2, 2), (4, 2), (1, 4)])
def test_gqa_growth_with_changed_kv_heads(kv):
    if kv[1] < kv[0]:  # fewer KV heads means a smaller k/v width: a shrink
        with pytest.raises(ValueError, match="width 'key' shrinks"):
            ligo_fast.grow(
                build("LlamaForCausalLM", configs("LlamaForCausalLM", kv=kv)[0]), configs("LlamaForCausalLM", kv=kv)[1]
            )
        return
    small_cfg, large_cfg = configs("LlamaForCausalLM", kv=kv)
    model = ligo_fast.grow(build("LlamaForCausalLM", small_cfg), large_cfg).eval()
    big = ligo_fast.materialize(model)
    hd = large_cfg.hidden_size // large_cfg.num_attention_heads
    assert big.model.layers[0].self_attn.k_proj.weight.shape == (kv[1] * hd, large_cfg.hidden_size)
    keys = set(model.state_dict())
    assert ("model.layers.0.fuse_width_attn.coeffs_weight" in keys) == (kv[0] != 4 or kv[1] != 4)
    x = inputs("LlamaForCausalLM")
    with torch.no_grad():
        torch.testing.assert_close(big(**x).logits, model(**x).logits, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["LlamaForCausalLM", "GPT2LMHeadModel"])
@pytest.mark.parametrize("tie", [True, False])
def test_tied_and_untied_embeddings(name, tie):
    small_cfg, large_cfg = configs(name, tie=tie)
    small = build(name, small_cfg)
    assert (small.lm_head.weight is small.get_input_embeddings().weight) == tie
    model = ligo_fast.grow(small, large_cfg, width_init="rand")  # the plain B W B^T algebra: an official width init
    produced = model.produce()
    emb_key = "model.embed_tokens.weight" if name.startswith("Llama") else "transformer.wte.weight"
    assert (produced["lm_head.weight"] is produced[emb_key]) == tie
    big = ligo_fast.materialize(model)
    assert (big.lm_head.weight is big.get_input_embeddings().weight) == tie
    if not tie:  # an untied head grows on its input side with the residual-stream width
        E = model.op.width__emb
        torch.testing.assert_close(produced["lm_head.weight"][:, 32:], small.lm_head.weight @ E.T)


@pytest.mark.parametrize(
    "name", ["LlamaForCausalLM", "GPT2LMHeadModel", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Gemma3ForCausalLM"]
)
def test_generate_on_a_grown_causal_lm(name):
    small_cfg, large_cfg = configs(name)
    model = ligo_fast.grow(build(name, small_cfg), large_cfg).eval()
    prompt = inputs(name, batch=1, seq=4)["input_ids"]
    a = model.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
    b = ligo_fast.materialize(model).generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert a.shape == (1, 9) and torch.equal(a, b)


def test_gpt2_fused_qkv_parts_grow_with_their_own_widths():
    small_cfg, large_cfg = configs("GPT2LMHeadModel")
    small = build("GPT2LMHeadModel", small_cfg)
    model = ligo_fast.grow(small, large_cfg, depth_init="stackbert", width_init="rand")  # plain B W B^T
    w = model.produce()["transformer.h.0.attn.c_attn.weight"]  # (in=48, 3*48), Conv1D layout
    q_small = small.transformer.h[0].attn.c_attn.weight[:, :32]
    E_emb, E_q = model.op.width__emb, model.op.width__query[0]
    torch.testing.assert_close(w[:32, :32], q_small)  # identity blocks are copies
    torch.testing.assert_close(w[:32, 32:48], q_small @ E_q.T)
    torch.testing.assert_close(w[32:, :32], E_emb @ q_small)
    k_small = small.transformer.h[0].attn.c_attn.weight[:, 32:64]
    torch.testing.assert_close(w[:32, 48:80], k_small)


def test_registering_a_custom_architecture():
    from ligo_fast import LINEAR, NORM, Arch, Module, Width, register_architecture  # the public API
    from ligo_fast.arch.llama import LLAMA_LM

    class MyLlama(T.LlamaForCausalLM):
        pass

    block = (
        Module("mlp.gate_proj", LINEAR, out="ffn", inp="emb"),
        Module("mlp.up_proj", LINEAR, out="ffn", inp="emb"),
        Module("mlp.down_proj", LINEAR, out="emb", inp="ffn"),
        Module("input_layernorm", NORM, out="emb"),
        Module("post_attention_layernorm", NORM, out="emb"),
        *[m for m in LLAMA_LM.layer_modules if m.path.startswith("self_attn")],
    )
    spec = dict(
        family="mine",
        model_types=("llama",),
        classes=("MyLlama",),
        layers="model.layers",
        layer_modules=block,
        modules=LLAMA_LM.modules,
    )
    with pytest.raises(ValueError, match="uses width 'query' but the description has no width of that name"):
        Arch(widths={"emb": Width("model.fuse_width_emb"), "ffn": Width("x.{l}", per_layer=True)}, **spec)
    with pytest.raises(ValueError, match="residual writer 'post_norm' is not one of the block's modules"):
        Arch(widths=dict(LLAMA_LM.widths), residual_writers=("post_norm",), **spec)
    arch = Arch(widths=dict(LLAMA_LM.widths), **spec)
    small_cfg, large_cfg = configs("LlamaForCausalLM", kv=(4, 4))
    assert ligo_fast.grow(MyLlama(small_cfg), large_cfg).arch.family == "llama"  # a subclass grows as its base
    register_architecture(arch)
    model = ligo_fast.grow(MyLlama(small_cfg), large_cfg)
    assert model.arch.family == "mine"  # a description of the class itself comes first
    assert type(ligo_fast.materialize(model)) is MyLlama


class _SubLlama(T.LlamaForCausalLM):
    """A user's subclass of a supported class (found through its base classes)."""


class _OwnDecoder(T.LlamaPreTrainedModel, T.GenerationMixin):
    """A user's own causal LM of Llama's layout, not derived from any supported class (found by config.model_type)."""

    def __init__(self, config):
        super().__init__(config)
        self.model = T.LlamaModel(config)
        self.lm_head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, **kwargs):
        return T.modeling_outputs.CausalLMOutput(logits=self.lm_head(self.model(input_ids=input_ids).last_hidden_state))


@pytest.mark.parametrize("cls", [_SubLlama, _OwnDecoder])
def test_subclasses_and_own_classes_of_a_family_grow(cls):
    small_cfg = configs("LlamaForCausalLM")[0]  # 4 heads of 8 -> 8 heads of 8 (a kept head size: exact under RoPE)
    large_cfg = T.LlamaConfig(
        **{**small_cfg.to_dict(), "hidden_size": 64, "intermediate_size": 80, "num_attention_heads": 8,
           "num_key_value_heads": 4, "num_hidden_layers": 3}
    )  # fmt: skip
    torch.manual_seed(0)
    small = cls(small_cfg).eval()
    small.load_state_dict(build("LlamaForCausalLM", small_cfg).state_dict())  # off HF's init
    model = ligo_fast.grow(small, large_cfg, depth_init="lossless", width_init="lossless").eval()
    assert model.arch.family == "llama" and "lm_head" in {m.path for m in model.arch.modules}
    x = inputs("LlamaForCausalLM")
    with torch.no_grad():
        torch.testing.assert_close(model(**x).logits, small(**x).logits, rtol=1e-5, atol=1e-5)
        big = ligo_fast.materialize(model)
        assert type(big) is cls
        torch.testing.assert_close(big(**x).logits, small(**x).logits, rtol=1e-5, atol=1e-5)


def test_a_model_type_without_the_family_layout_is_refused():
    # BERT's model_type, but a token-classification head that no BERT description names
    with pytest.raises(ValueError, match="BertForTokenClassification is not supported.*subclasses"):
        ligo_fast.grow(T.BertForTokenClassification(configs("BertModel")[0]), configs("BertModel")[1])


def test_gemma_norms_grow_their_effective_scale():
    # Gemma's RMSNorm scales by 1 + w: a new feature's scale is E (1 + w), stored as E (1 + w) - 1 (which is not E w
    # where a row of E does not sum to 1, as sel_noisy's); the head size grows 12 -> 16, so q_norm grows too
    small_cfg, large_cfg = configs("Gemma3ForCausalLM")
    small = build("Gemma3ForCausalLM", small_cfg)
    model = ligo_fast.grow(small, large_cfg, width_init="sel_noisy", width_noise=0.05, seed=1)
    produced = model.produce()
    E = model.op.width__emb
    assert not torch.allclose(E.sum(-1), torch.ones(E.shape[0]))
    w = small.model.norm.weight
    torch.testing.assert_close(produced["model.norm.weight"], torch.cat([w, E @ (1 + w) - 1]))
    Eh, D = model.op.width__head[1], model.op.depth__self_attn__q_norm__weight[1]
    q = D @ torch.stack([layer.self_attn.q_norm.weight for layer in small.model.layers])  # large layer 1's mix
    torch.testing.assert_close(produced["model.layers.1.self_attn.q_norm.weight"], torch.cat([q, Eh @ (1 + q) - 1]))


def test_gemma_norms_keep_their_bits_in_bfloat16():
    # the offset is added in float32: 1 + w in bfloat16 would round a small w (0.05 -> 0.046875)
    small_cfg, _ = configs("Gemma3ForCausalLM")
    small = build("Gemma3ForCausalLM", small_cfg).to(torch.bfloat16)
    produced = ligo_fast.grow(small, small_cfg, depth_init="stackbert", residual=False).produce()
    for k, v in small.state_dict().items():
        if k.endswith("norm.weight"):
            assert torch.equal(produced[k], v), k


def test_gemma_layer_kinds_that_do_not_follow_the_copies_are_noted():
    small_cfg, large_cfg = configs("Gemma3ForCausalLM")  # layer kinds: small [sliding, full], large grown from them
    small = build("Gemma3ForCausalLM", small_cfg)
    lossless = dict(depth_init="lossless", width_init="lossless")

    def kind_notes():
        return [n for n in ligo_fast.grow(small, large_cfg, **lossless).plan.notes if "attention kind" in n]

    assert kind_notes() == []
    large_cfg.layer_types = ["full_attention"] * large_cfg.num_hidden_layers
    notes = kind_notes()
    assert len(notes) == 1 and "large layer 0 copies small layer 0" in notes[0], notes
