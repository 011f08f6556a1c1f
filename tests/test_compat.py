"""The official LiGO API (ligo_fast.compat): fixture parity, checkpoint layout, interop with grow, schemes, errors."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers as T
from safetensors.torch import load_file
from torch import nn

import ligo_fast
from ligo_fast import ExecutionOptions, compat
from ligo_fast.compat import (
    FusedDepthParams,
    FusedEmbedding,
    FusedLayeredNorm,
    FusedLinear,
    FusedWidthParams,
    config_from_args,
    create_ligo_from_model,
    initialize_model_with_ligo,
    ligo_args,
    materialize_compat,
    set_execution_options,
)

FIXTURES = Path(__file__).parent / "fixtures"
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "case.json").exists())
CLASSES = {"bert": (T.BertConfig, T.BertForMaskedLM), "roberta": (T.RobertaConfig, T.RobertaForMaskedLM)}
OFFICIAL_DEPTH = ("rand", "rand_softmax", "stackbert", "interlace", "stackbert_noisy", "interlace_noisy")
OFFICIAL_WIDTH = ("rand", "rand_softmax", "sel", "sel_noisy")


# ---------------------------------------------------------------------- helpers
def _fixture(case: str):
    """(model class, small model, large config, args, operator, grown, io) of one official fixture."""
    d = FIXTURES / case
    spec = json.loads((d / "case.json").read_text())
    Cfg, Cls = CLASSES[spec["kind"]]
    small = Cls(Cfg.from_dict(spec["small_config"])).eval()
    small.load_state_dict(load_file(str(d / "small.safetensors")))
    o = spec["options"]
    args = ligo_args(
        fuse_init_scheme_depth=o["depth_init"],
        fuse_init_scheme_width=o["width_init"],
        fuse_tie_param=o["tie"],
        tune_residual=o["residual"],
    )
    tensors = [load_file(str(d / f"{n}.safetensors")) for n in ("operator", "grown", "io")]
    return Cls, small, Cfg.from_dict(spec["large_config"]), args, *tensors


def _tiny(kind: str, seed: int = 0, **large):
    """A small model with weights off HF's init (odd sizes) and a larger config of the same class."""
    Cfg, Cls = CLASSES[kind]
    common = dict(vocab_size=53, max_position_embeddings=24, tie_word_embeddings=False)
    small_cfg = Cfg(hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=40, **common)
    kw = dict(hidden_size=40, num_hidden_layers=3, num_attention_heads=4, intermediate_size=72) | large
    small = Cls(small_cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in small.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return Cls, small, Cfg(**kw, **common)


def _shapes(sd) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def _grow(small, large_cfg, args, **extra) -> ligo_fast.LiGOModel:
    """ligo_fast.grow with the options ``args`` asks for."""
    return ligo_fast.grow(small, large_cfg, config_from_args(args).replace(**extra))


def _ids(vocab: int, seed: int = 1, shape=(2, 9)) -> torch.Tensor:
    # ids from 3 up: RoBERTa's padding id is 1, and a fresh draw keeps every position used
    return torch.randint(3, vocab, shape, generator=torch.Generator().manual_seed(seed))


def _max_err(a: dict, b: dict, keys) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in keys)


# ---------------------------------------------------------------------- official fixtures
@pytest.mark.parametrize("case", CASES)
def test_fixture_operator_reproduces_grown_weights_and_logits(case):
    Cls, small, large_cfg, args, operator, grown, io = _fixture(case)
    model = create_ligo_from_model(Cls(large_cfg), args, source_model=small)
    before = materialize_compat(model).state_dict()
    model.load_state_dict(operator, strict=True)

    for plain in (materialize_compat(model), ligo_fast.materialize(model)):
        assert type(plain) is Cls
        assert not any(isinstance(m, compat.FUSED) for m in plain.modules())
        sd = plain.state_dict()
        assert not any(k.startswith("__sm_") for k in sd)
        err = _max_err(sd, grown, grown)
        assert err < 1e-5, f"{case}: materialized weights off by {err}"
    assert _max_err(before, grown, grown) > 1e-2  # the loaded operator, not the initial one, made them

    model.eval()
    with torch.no_grad():
        logits = model(input_ids=io["input_ids"]).logits
        plain_logits = plain.eval()(input_ids=io["input_ids"]).logits
    err = (logits - io["logits"]).abs().max().item()
    assert err < 1e-4, f"{case}: wrapped logits off by {err}"
    assert (plain_logits - io["logits"]).abs().max().item() < 1e-4


@pytest.mark.parametrize("case", CASES)
def test_state_dict_layout_matches_fixture_and_grow(case):
    Cls, small, large_cfg, args, operator, _, _ = _fixture(case)
    ours = _shapes(create_ligo_from_model(Cls(large_cfg), args, source_model=small).state_dict())
    assert ours == _shapes(operator)
    assert ours == _shapes(_grow(small, large_cfg, args).state_dict())


def test_small_tensors_are_copied_and_stacked_last():
    Cls, small, large_cfg = _tiny("bert")
    model = create_ligo_from_model(Cls(large_cfg), ligo_args(), source_model=small)
    sd = small.state_dict()
    q = model.get_buffer("__sm_attention_self_query_weight")
    assert q.shape == (24, 24, 2)
    for j in range(2):
        assert torch.equal(q[..., j], sd[f"bert.encoder.layer.{j}.attention.self.query.weight"])
    assert torch.equal(model.get_buffer("__sm_cls_predictions_decoder_weight"), sd["cls.predictions.decoder.weight"])
    key = "bert.encoder.layer.0.attention.self.query.weight"
    before = sd[key].clone()
    q.add_(1.0)  # a copy: the small model is untouched
    assert torch.equal(small.state_dict()[key], before)


# ---------------------------------------------------------------------- interop with ligo_fast.grow
@pytest.mark.parametrize(
    "kind,options",
    [
        ("bert", dict(fuse_tie_param=True, fuse_init_scheme_depth="rand")),
        ("roberta", dict(fuse_tie_param=False, tune_residual=True, fuse_init_scheme_width="rand_softmax")),
        (
            "bert",
            dict(fuse_tie_param=True, tune_residual=True, tune_small_model=True, fuse_init_scheme_width="sel_noisy"),
        ),
    ],
)
def test_checkpoints_cross_load_between_compat_and_grow(kind, options):
    Cls, small, large_cfg = _tiny(kind)
    args = ligo_args(**options)
    ours = create_ligo_from_model(Cls(large_cfg), args, source_model=small)
    fast = _grow(small, large_cfg, args, seed=7)
    assert _shapes(ours.state_dict()) == _shapes(fast.state_dict())

    # compat -> grow: both now hold compat's (random) coefficients
    fast.load_state_dict(ours.state_dict(), strict=True)
    produced = compat._produced(ours)
    assert set(produced) == set(fast.produce())
    assert _max_err(produced, fast.produce(), produced) < 1e-5

    # grow -> a fresh compat model
    fast2 = _grow(small, large_cfg, args, seed=11)
    ours.load_state_dict(fast2.state_dict(), strict=True)
    a, b = materialize_compat(ours).state_dict(), ligo_fast.materialize(fast2).state_dict()
    assert _max_err(a, b, produced) < 1e-5
    assert _max_err(a, fast.produce(), produced) > 1e-3  # the second load replaced the first operator

    ids = _ids(large_cfg.vocab_size)
    with torch.no_grad():
        err = (ours.eval()(input_ids=ids).logits - fast2.eval()(input_ids=ids).logits).abs().max().item()
    assert err < 1e-4


# ---------------------------------------------------------------------- files: from_pretrained and pytorch_model.bin
@pytest.mark.parametrize("case", ["bert_untied_residual", "roberta_interlace_sel"])
def test_initialize_model_with_ligo_from_files(case, tmp_path):
    Cls, small, large_cfg, args, operator, grown, _ = _fixture(case)
    small.save_pretrained(tmp_path / "small")
    args.source_model_path = [str(tmp_path / "small")]
    args.pretrained_ligo_path = str(tmp_path / "ligo")

    wrapped = create_ligo_from_model(Cls(large_cfg), args)  # reads the small model from source_model_path
    for k, v in small.state_dict().items():
        if ".encoder.layer." not in k:
            assert torch.equal(wrapped.get_buffer("__sm_" + k.replace(".", "_")), v)
    wrapped.load_state_dict(operator, strict=True)
    (tmp_path / "ligo").mkdir()
    torch.save(wrapped.state_dict(), tmp_path / "ligo" / "pytorch_model.bin")

    large = Cls(large_cfg)
    probe = f"{case.split('_')[0]}.encoder.layer.1.attention.self.query.weight"
    untouched = large.state_dict()[probe].clone()
    out = initialize_model_with_ligo(large, args)
    assert out is large
    sd = large.state_dict()
    ref = materialize_compat(wrapped).state_dict()
    assert _max_err(sd, ref, grown) < 1e-5
    assert _max_err(sd, grown, grown) < 1e-5
    assert not torch.allclose(sd[probe], untouched)


def test_initialize_model_with_ligo_missing_checkpoint(tmp_path):
    Cls, _, large_cfg = _tiny("bert")
    args = ligo_args(source_model_path=[str(tmp_path)], pretrained_ligo_path=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        initialize_model_with_ligo(Cls(large_cfg), args)


# ---------------------------------------------------------------------- the Fused modules against the math
def _B(E: torch.Tensor | None, small: int) -> torch.Tensor:
    eye = torch.eye(small, dtype=torch.float64)
    return eye if E is None else torch.cat([eye, E.double()])


def test_fused_linear_block_module_is_the_ligo_formula():
    host = nn.Module()
    L1, o1, i1, o2, i2 = 3, 5, 7, 9, 11
    host.register_buffer("__sm_blk_lin_weight", torch.randn(o1, i1, L1))
    host.register_buffer("__sm_blk_lin_bias", torch.randn(o1, L1))
    lin = FusedLinear(host, "blk.lin", i2, o2, layer_index=2, residual=True, init_scheme_depth="rand")
    assert set(lin.state_dict()) == {
        "fuse_depth_coeffs.coeffs_weight",
        "fuse_depth_coeffs.coeffs_bias",
        "fuse_width_in.coeffs_weight",
        "fuse_width_out.coeffs_weight",
        "residual_weight",
        "residual_bias",
    }
    W, b = host.__sm_blk_lin_weight.double(), host.__sm_blk_lin_bias.double()
    d = lin.fuse_depth_coeffs
    B_out, B_in = _B(lin.fuse_width_out.coeffs_weight, o1), _B(lin.fuse_width_in.coeffs_weight, i1)
    want_w = B_out @ (W @ d.coeffs_weight.double()) @ B_in.T + lin.residual_weight.double()
    want_b = B_out @ (b @ d.coeffs_bias.double()) + lin.residual_bias.double()
    w, bias = lin.get_params()
    assert w.shape == (o2, i2) and bias.shape == (o2,)
    torch.testing.assert_close(w.double(), want_w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bias.double(), want_b, atol=1e-5, rtol=1e-5)
    x = torch.randn(4, i2)
    torch.testing.assert_close(lin(x), x @ w.T + bias)


def test_fused_linear_global_module_with_ties():
    host = nn.Module()
    host.register_buffer("__sm_head_dense_weight", torch.randn(6, 4))  # no bias
    tie_in, tie_out = FusedWidthParams(4, 10, learnable=True), FusedWidthParams(6, 8, learnable=True)
    lin = FusedLinear(host, "head.dense", 10, 8, width_in_tie=tie_in, width_out_tie=tie_out)
    assert list(lin.state_dict()) == []  # the tied matrices live with their owner, no depth outside blocks
    assert list(lin.parameters()) == []
    with torch.no_grad():
        tie_in.coeffs_weight.add_(torch.rand_like(tie_in.coeffs_weight))
    w, bias = lin.get_params()
    want = _B(tie_out.coeffs_weight, 6) @ host.__sm_head_dense_weight.double() @ _B(tie_in.coeffs_weight, 4).T
    assert bias is None
    torch.testing.assert_close(w.double(), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="width_in_tie grows 4 -> 10"):
        FusedLinear(host, "head.dense", 12, 8, width_in_tie=tie_in)


def test_fused_layernorm_and_embedding_are_the_ligo_formula():
    host = nn.Module()
    host.register_buffer("__sm_ln_weight", torch.randn(6, 2))
    host.register_buffer("__sm_ln_bias", torch.randn(6, 2))
    host.register_buffer("__sm_emb_weight", torch.randn(13, 6))
    ln = FusedLayeredNorm(host, "ln", 9, layer_index=3, eps=1e-7, residual=True, init_scheme_depth="stackbert_noisy")
    w, b = ln.get_params()
    B = _B(ln.fuse_width_out.coeffs_weight, 6)
    d = ln.fuse_depth_coeffs
    want_w = B @ (host.__sm_ln_weight.double() @ d.coeffs_weight.double()) + ln.residual_weight.double()
    want_b = B @ (host.__sm_ln_bias.double() @ d.coeffs_bias.double()) + ln.residual_bias.double()
    torch.testing.assert_close(w.double(), want_w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.double(), want_b, atol=1e-5, rtol=1e-5)
    x = torch.randn(3, 9)
    torch.testing.assert_close(ln(x), F.layer_norm(x, (9,), w, b, 1e-7))

    emb = FusedEmbedding(host, "emb", 13, 9, padding_idx=0, residual=True)
    assert set(emb.state_dict()) == {"fuse_width_out.coeffs_weight", "residual_weight"}
    want = host.__sm_emb_weight.double() @ _B(emb.fuse_width_out.coeffs_weight, 6).T + emb.residual_weight.double()
    torch.testing.assert_close(emb.get_params().double(), want, atol=1e-5, rtol=1e-5)
    ids = torch.randint(0, 13, (2, 5))
    torch.testing.assert_close(emb(ids), emb.get_params()[ids])
    with pytest.raises(ValueError, match="never grow"):
        FusedEmbedding(host, "emb", 20, 9)


# ---------------------------------------------------------------------- init schemes
@pytest.mark.parametrize("scheme", OFFICIAL_DEPTH)
def test_depth_params_schemes(scheme):
    L1, noise = 3, 0.03
    for l in range(6):
        d = FusedDepthParams(l, L1, bias=True, init_scheme=scheme, init_noise=noise)
        for c in (d.coeffs_weight, d.coeffs_bias):
            assert isinstance(c, nn.Parameter) and c.shape == (L1,)
            assert math.isclose(c.sum().item(), 1.0, rel_tol=1e-6)
            assert (c >= 0).all()
            base = scheme.removesuffix("_noisy")
            if base in ("stackbert", "interlace"):
                hot = l % L1 if base == "stackbert" else l // 2
                others = torch.cat([c[:hot], c[hot + 1 :]])
                if scheme.endswith("_noisy"):
                    assert c.argmax().item() == hot and c[hot] > 1 / (1 + (L1 - 1) * noise) - 1e-6
                    assert (others > 0).all() and (others < noise).all()
                else:
                    assert torch.equal(c, F.one_hot(torch.tensor(hot), L1).float())
            else:
                assert (c > 0).all()
                if base == "rand_softmax":  # softmax of [0, 1) draws: no entry exceeds e times another
                    assert c.max() / c.min() < math.e
        if scheme.startswith("rand"):
            assert not torch.equal(d.coeffs_weight, d.coeffs_bias)  # two separate draws


def test_depth_params_flags_and_reset():
    d = FusedDepthParams(1, 4, bias=False, learnable=False, init_scheme="stackbert")
    assert d.coeffs_bias is None
    assert list(d.parameters()) == [] and set(d.state_dict()) == {"coeffs_weight"}
    with torch.no_grad():
        d.coeffs_weight.fill_(0.25)
    d.reset_parameters()
    assert torch.equal(d.coeffs_weight, torch.tensor([0.0, 1.0, 0.0, 0.0]))
    r = FusedDepthParams(0, 4, init_scheme="rand")
    first = r.coeffs_weight.detach().clone()
    r.reset_parameters()
    assert not torch.equal(first, r.coeffs_weight) and math.isclose(r.coeffs_weight.sum().item(), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize("scheme", OFFICIAL_WIDTH)
def test_width_params_schemes(scheme):
    noise = 0.05
    w = FusedWidthParams(7, 40, init_scheme=scheme, init_noise=noise)
    E = w.coeffs_weight
    assert E.shape == (33, 7)
    assert not isinstance(E, nn.Parameter) and set(w.state_dict()) == {"coeffs_weight"}  # official default: fixed
    assert (E >= 0).all()
    if scheme.startswith("rand"):
        torch.testing.assert_close(E.sum(-1), torch.ones(33))
        if scheme == "rand_softmax":
            assert (E.max(-1).values / E.min(-1).values < math.e).all()
    else:
        assert ((E == 1).sum(-1) == 1).all()
        rest = E[E != 1]
        if scheme == "sel":
            assert (rest == 0).all()
        else:
            assert (rest < noise).all() and (rest > 0).all()
        assert len(set(E.argmax(-1).tolist())) > 1  # a random column per row, not one fixed choice


def test_width_params_unchanged_width_and_learnable():
    same = FusedWidthParams(8, 8, learnable=True)
    assert same.coeffs_weight is None and list(same.state_dict()) == []
    grows = FusedWidthParams(8, 12, learnable=True)
    assert isinstance(grows.coeffs_weight, nn.Parameter)
    first = grows.coeffs_weight.detach().clone()
    grows.reset_parameters()
    assert not torch.equal(first, grows.coeffs_weight)


# ---------------------------------------------------------------------- arguments
def test_args_map_to_ligo_config():
    assert config_from_args(ligo_args()) == ligo_fast.LiGOConfig.official()
    args = ligo_args(
        fuse_init_scheme_depth="interlace",
        fuse_init_scheme_width="sel_noisy",
        fuse_init_noise_depth=0.1,
        fuse_init_noise_width=0.2,
        tune_depth=False,
        tune_width=False,
        tune_small_model=True,
        tune_residual=True,
        tune_residual_noise=0.3,
        fuse_tie_param=False,
    )
    assert config_from_args(args) == ligo_fast.LiGOConfig(
        depth_init="interlace", width_init="sel_noisy", depth_noise=0.1, width_noise=0.2, train_depth=False,
        train_width=False, train_small=True, residual=True, residual_noise=0.3, tie=False,
    )  # fmt: skip
    with pytest.raises(TypeError, match="fuse_tie_param"):
        ligo_args(fuse_tie=True)


def test_options_reach_the_modules():
    Cls, small, large_cfg = _tiny("roberta")
    args = ligo_args(tune_depth=False, tune_width=False, tune_small_model=True, fuse_init_scheme_depth="interlace")
    model = create_ligo_from_model(Cls(large_cfg), args, source_model=small)
    names = [n for n, _ in model.named_parameters()]
    assert names and all(n.startswith("__sm_") or n == "lm_head.bias" for n in names)
    layer2 = model.roberta.encoder.layer[2]
    assert torch.equal(layer2.attention.self.query.fuse_depth_coeffs.coeffs_weight, torch.tensor([0.0, 1.0]))
    assert layer2.attention.self.query.width_in_tie is model.roberta.embeddings.fuse_width_emb
    assert layer2.attention.output.dense.width_in_tie is layer2.fuse_width_value
    assert model.lm_head.decoder.width_in_tie is model.lm_head.fuse_width_cls


# ---------------------------------------------------------------------- training
def test_gradients_reach_coefficients_not_small_buffers():
    Cls, small, large_cfg = _tiny("bert")
    model = create_ligo_from_model(Cls(large_cfg), ligo_args(tune_residual=True), source_model=small).train()
    ids = _ids(large_cfg.vocab_size)
    model(input_ids=ids, labels=_ids(large_cfg.vocab_size, seed=2)).loss.backward()
    op = {n: p for n, p in model.named_parameters() if ".fuse_" in n or ".residual_" in n}
    assert len(op) > 50
    missing = [n for n, p in op.items() if p.grad is None or p.grad.abs().max() == 0]
    assert not missing, missing[:5]
    assert not any(n.startswith("__sm_") for n, _ in model.named_parameters())
    bufs = [b for n, b in model.named_buffers() if n.startswith("__sm_")]
    assert bufs and all(not b.requires_grad and b.grad is None for b in bufs)


def test_gradients_reach_small_weights_when_tuned():
    Cls, small, large_cfg = _tiny("roberta")
    args = ligo_args(tune_small_model=True, tune_width=False)
    model = create_ligo_from_model(Cls(large_cfg), args, source_model=small).train()
    F.cross_entropy(
        model(input_ids=_ids(large_cfg.vocab_size)).logits.flatten(0, 1), _ids(large_cfg.vocab_size, 2).flatten()
    ).backward()
    sm = {n: p for n, p in model.named_parameters() if n.startswith("__sm_")}
    unused = {"__sm_lm_head_bias"}  # HF keeps an extra head bias that the decoder does not use
    assert set(sm) - unused and all(sm[n].grad is not None and sm[n].grad.abs().max() > 0 for n in set(sm) - unused)
    assert not any(".fuse_width" in n for n, _ in model.named_parameters())  # fixed buffers now


def test_deepcopy_rebinds_to_the_copy():
    Cls, small, large_cfg = _tiny("bert")
    model = create_ligo_from_model(Cls(large_cfg), ligo_args(), source_model=small).eval()
    twin = copy.deepcopy(model)
    ids = _ids(large_cfg.vocab_size)
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        torch.testing.assert_close(twin(input_ids=ids).logits, ref)
        twin.get_buffer("__sm_attention_self_query_weight").mul_(2.0)
        assert torch.equal(model(input_ids=ids).logits, ref)
        assert not torch.allclose(twin(input_ids=ids).logits, ref)


# ---------------------------------------------------------------------- errors
def test_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="valid schemes: .*stackbert_noisy"):
        FusedDepthParams(0, 2, init_scheme="stack")
    with pytest.raises(ValueError, match="valid schemes: .*sel_noisy"):
        FusedWidthParams(4, 8, init_scheme="select")
    with pytest.raises(ValueError, match="at most 4 large ones; layer_index=4"):
        FusedDepthParams(4, 2, init_scheme="interlace_noisy")
    with pytest.raises(ValueError, match="shrinks"):
        FusedWidthParams(8, 4)

    Cls, small, large_cfg = _tiny("bert")
    with pytest.raises(ValueError, match="interlace"):
        create_ligo_from_model(
            Cls(_tiny("bert", num_hidden_layers=5)[2]),
            ligo_args(fuse_init_scheme_depth="interlace"),
            source_model=small,
        )
    with pytest.raises(ValueError, match="valid"):
        create_ligo_from_model(Cls(large_cfg), ligo_args(fuse_init_scheme_width="uniform"), source_model=small)
    with pytest.raises(ValueError, match="shrinks"):
        create_ligo_from_model(Cls(_tiny("bert", hidden_size=16)[2]), ligo_args(), source_model=small)
    with pytest.raises(ValueError, match="shrinks"):
        create_ligo_from_model(Cls(_tiny("bert", num_hidden_layers=1)[2]), ligo_args(), source_model=small)
    seq = T.BertForSequenceClassification(large_cfg)
    with pytest.raises(ValueError, match="supported classes: BertForMaskedLM, RobertaForMaskedLM"):
        create_ligo_from_model(seq, ligo_args(), source_model=small)
    _, rsmall, rlarge = _tiny("roberta")
    with pytest.raises(ValueError, match="one class"):
        create_ligo_from_model(Cls(large_cfg), ligo_args(), source_model=rsmall)
    with pytest.raises(ValueError, match="source_model_path"):
        create_ligo_from_model(Cls(large_cfg), ligo_args())
    wrapped = create_ligo_from_model(Cls(large_cfg), ligo_args(), source_model=small)
    with pytest.raises(ValueError, match="already wrapped"):
        create_ligo_from_model(wrapped, ligo_args(), source_model=small)
    for fn in (materialize_compat, ligo_fast.materialize):
        with pytest.raises(ValueError, match="no LiGO operator"):
            fn(small)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_factored_layers_match_materialised_ones(kind, monkeypatch):
    """compat's batch runs the block linears the cost model picks factored (no weight produced); the loss and every
    operator gradient equal those of the same operator with every layer materialised (float64)."""
    from ligo_fast import factored

    Cls, small, large_cfg = _tiny(kind)
    model = create_ligo_from_model(Cls(large_cfg), ligo_args(), source_model=small).double().train()
    ids, labels = _ids(large_cfg.vocab_size, shape=(1, 5)), _ids(large_cfg.vocab_size, seed=2, shape=(1, 5))
    picked = []
    real = factored.layer_factors
    monkeypatch.setattr(
        factored, "layer_factors", lambda slots, get, **k: picked.extend(slots) or real(slots, get, **k)
    )

    def step():
        model.zero_grad()
        torch.manual_seed(0)  # the same dropout masks
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = step()
    assert picked, "the cost model picks factored layers for a 5-token batch (else this test checks nothing)"
    # the vocabulary table and the (untied, as in the official code) decoder run factored too
    head = "cls.predictions.decoder" if kind == "bert" else "lm_head.decoder"
    assert {s.mod.path for s in picked if not s.layered} >= {f"{kind}.embeddings.word_embeddings", head}
    # the same operator with every layer materialised: its plan for this batch shape is another one
    set_execution_options(model, ExecutionOptions(linear_mode="materialize"))
    picked.clear()
    ref_loss, ref = step()
    assert not picked
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    assert grads.keys() == ref.keys() and len(ref) > 50
    for k in ref:
        torch.testing.assert_close(grads[k], ref[k], rtol=1e-10, atol=1e-12, msg=lambda m, k=k: f"{k}: {m}")


def test_the_official_api_runs_the_same_execution_plans(monkeypatch):
    """The wrapped model decides and binds as LiGOModel does: memory-lean mode (chunks of layers produced just in
    time) and the factored forms give the loss and every operator gradient of the eager, materialised run (float64),
    and after a forward nothing stays bound on its modules."""
    from ligo_fast import binding, execution

    Cls, small, large_cfg = _tiny("bert", num_hidden_layers=5)
    model = create_ligo_from_model(Cls(large_cfg), ligo_args(), source_model=small).double().train()
    ids, labels = _ids(large_cfg.vocab_size, shape=(2, 7)), _ids(large_cfg.vocab_size, seed=2, shape=(2, 7))
    lean_chunks = []
    real = execution.lean_layers

    def spy(large, blocks, chunks, *a):
        lean_chunks.append([(c.start, c.stop) for c in chunks])
        return real(large, blocks, chunks, *a)

    def step(options):
        set_execution_options(model, options)
        model.zero_grad()
        torch.manual_seed(0)  # the same dropout masks
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        assert not binding.installed(model), "something stayed bound after the forward"
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref_loss, ref = step(ExecutionOptions(lean=False, linear_mode="materialize"))
    monkeypatch.setattr(execution, "lean_layers", spy)
    runs = [step(ExecutionOptions(lean=True, linear_mode=m)) for m in ("materialize", "factored")]
    assert lean_chunks == [[(0, 3), (3, 5)]] * 2  # chunks of about sqrt(5) layers, in both runs
    for loss, grads in runs:
        torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
        assert grads.keys() == ref.keys() and len(ref) > 50
        for k in ref:
            torch.testing.assert_close(grads[k], ref[k], rtol=1e-10, atol=1e-12, msg=lambda m, k=k: f"{k}: {m}")
    with pytest.raises(ValueError, match="not wrapped"):
        set_execution_options(small, ExecutionOptions())
