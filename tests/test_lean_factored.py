"""Memory-lean expansion and the factored mode: the same numbers as eager materialisation, less kept alive."""

import dataclasses
import gc
import weakref

import pytest
import torch
import transformers as T
from _models import build, configs, inputs, main_output

import ligo_fast
from ligo_fast import produce as produce_module
from ligo_fast.factored import CPU, H200, break_even_tokens, costs, factored_linear, module_ok

CASES = ["BertForMaskedLM", "LlamaForCausalLM", "GPT2LMHeadModel", "ViTForImageClassification", "Gemma3ForCausalLM"]


def _step(name, **options):
    torch.manual_seed(0)  # the same small model for every call
    small_cfg, large_cfg = configs(name)
    model = ligo_fast.grow(build(name, small_cfg), large_cfg, seed=0, depth_init="rand", **options).eval()
    out = main_output(model(**inputs(name)))
    out.float().pow(2).mean().backward()
    return model, out.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize(
    "options",
    [
        dict(lean=True),
        dict(linear_mode="factored"),
        dict(lean=True, linear_mode="factored"),
        dict(lean=True, linear_mode="auto"),
    ],
)
def test_same_outputs_and_operator_gradients_as_eager(name, residual, options):
    _, ref_out, ref_grads = _step(name, lean=False, residual=residual)
    model, out, grads = _step(name, residual=residual, **options)
    # the combination under test really ran: lean where asked, and factored block linears where a mode allows them
    # (auto never factors a residual linear; GPT-2's Conv1D layers always materialise)
    mode = options.get("linear_mode")
    if mode and not name.startswith("GPT2") and not (residual and mode == "auto"):
        assert model.factored_plan((), inputs(name)), "no block linear ran factored"
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    assert sorted(grads) == sorted(ref_grads)
    for k in grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", ["cpp", "torch"])  # torch's production saves intermediates: checkpointed
def test_lean_keeps_no_chunk_weights_between_forward_and_backward(monkeypatch, backend):
    monkeypatch.setenv("LIGO_FAST_BACKEND", backend)
    name = "LlamaForCausalLM"
    small_cfg, large_cfg = configs(name)
    large_cfg.num_hidden_layers = 7  # chunks of 3 layers: [0, 1, 2], [3, 4, 5], [6]
    model = ligo_fast.grow(build(name, small_cfg), large_cfg, lean=True)
    assert model.lean_chunk((), inputs(name)) == 3
    refs: list[tuple[int | None, weakref.ref]] = []
    alive_others: list[int] = []
    real = produce_module.produce

    def spy(slots, get, *, layers=None, **k):
        chunk = None if layers is None else layers.start
        gc.collect()
        alive_others.append(len({c for c, r in refs if c is not None and c != chunk and r() is not None}))
        out = real(slots, get, layers=layers, **k)
        refs.extend((chunk, weakref.ref(t)) for t in out.values())
        return out

    monkeypatch.setattr(produce_module, "produce", spy)
    loss = model(**inputs(name), labels=inputs(name)["input_ids"]).loss
    gc.collect()
    assert [c for c, r in refs if c is not None and r() is not None] == []  # nothing of a block kept for backward
    assert sorted({c for c, _ in refs if c is not None}) == [0, 3, 6]
    loss.backward()
    assert max(alive_others) <= 1  # at most one other chunk's weights alive whenever one is produced
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_lean_stacks_each_per_layer_tensor_once_per_chunk(monkeypatch):
    """The op calls save their inputs until backward: a chunk's module kinds that read one per-layer tensor (q/k/v
    and gate/up/down share width matrices) read one stacked copy of its chunk's rows, not a copy each."""
    name = "LlamaForCausalLM"
    small_cfg, large_cfg = configs(name)
    large_cfg.num_hidden_layers = 7
    model = ligo_fast.grow(build(name, small_cfg), large_cfg, lean=True)
    widths = [e for s in model.plan.slots if s.layered for e in (*s.e_rows, *s.e_cols) if e is not None]
    assert len(set(widths)) < len(widths)  # kinds share width matrices
    same: list[bool] = []
    real = produce_module.produce

    def spy(slots, get, *, layers=None, **k):
        if layers is not None:  # a chunk's production, in forward and again in backward
            same.append(all(get(e) is get(e) for e in widths))
        return real(slots, get, layers=layers, **k)

    monkeypatch.setattr(produce_module, "produce", spy)
    model(**inputs(name), labels=inputs(name)["input_ids"]).loss.backward()
    assert len(same) == 6 and all(same)


def test_lean_cost_is_linear_in_depth_in_production_calls(monkeypatch):
    # per step: forward one production per chunk, backward one more per chunk (cpp ops save only their inputs)
    name = "LlamaForCausalLM"
    small_cfg, large_cfg = configs(name)
    counts = {}
    for layers in (4, 16):
        large_cfg.num_hidden_layers = layers
        model = ligo_fast.grow(build(name, small_cfg), large_cfg, lean=True)
        calls: list = []

        def counting(*a, _calls=calls, _real=produce_module.produce, **k):
            _calls.append(k.get("layers"))
            return _real(*a, **k)

        monkeypatch.setattr(produce_module, "produce", counting)
        model(**inputs(name), labels=inputs(name)["input_ids"]).loss.backward()
        monkeypatch.undo()
        counts[layers] = len([c for c in calls if c is not None])
        assert counts[layers] == 2 * len(range(0, layers, model.lean_chunk((), inputs(name))))
    assert counts[16] <= 4 * counts[4]


def test_lean_auto_decides_from_the_memory_budget():
    from ligo_fast import memory

    small_cfg, large_cfg = configs("BertForMaskedLM")
    large_cfg.num_hidden_layers = 9  # lean holds chunks of 3 layers
    x = inputs("BertForMaskedLM")
    model = ligo_fast.grow(build("BertForMaskedLM", small_cfg), large_cfg)
    mp = model.memory_plan(**x)
    assert 0 < mp.lean < mp.eager and mp.produced > 0 and mp.activations > 0 and mp.tokens == 14
    assert "eager" in str(mp) and "budget" in str(mp) and memory.BUDGET_ENV in str(mp)
    assert not model.lean_now((), x)  # the tests' budget (conftest) is plenty
    # only as much memory as the lean step needs: the eager one would not fit, lean turns itself on
    fresh = ligo_fast.grow(build("BertForMaskedLM", small_cfg), large_cfg, memory_budget=int((mp.lean + 1) / 0.9))
    assert fresh.memory_budget == int((mp.lean + 1) / 0.9)
    assert fresh.lean_now((), x)
    with torch.no_grad():
        assert not fresh.lean_now((), x)  # no backward: nothing to keep


def test_the_memory_budget_is_read_once_per_model(monkeypatch):
    """The free memory is read when the model is built, never again: the same run decides the same way (eager or
    lean, hence the factored forms) when other processes take memory later, for batch shapes seen before or not."""
    from ligo_fast import memory

    monkeypatch.delenv(memory.BUDGET_ENV)
    free = [10**15]
    monkeypatch.setattr(memory, "_meminfo_available", lambda: free[0])
    monkeypatch.setattr(memory, "cgroup_available", lambda: None)
    small_cfg, large_cfg = configs("BertForMaskedLM")
    model = ligo_fast.grow(build("BertForMaskedLM", small_cfg), large_cfg)
    assert model.memory_budget == 10**15
    free[0] = 1  # the machine got busy
    for shape in [(2, 7), (3, 5), (64, 64)]:
        x = {"input_ids": torch.randint(0, 99, shape)}
        assert not model.lean_now((), x), shape
        assert model.memory_plan(**x).available == 10**15
    # the option and the variable override the reading, the option first
    monkeypatch.setenv(memory.BUDGET_ENV, "3GiB")
    assert ligo_fast.grow(build("BertForMaskedLM", small_cfg), large_cfg).memory_budget == 3 * 2**30
    assert ligo_fast.grow(build("BertForMaskedLM", small_cfg), large_cfg, memory_budget=2**33).memory_budget == 2**33
    monkeypatch.setenv(memory.BUDGET_ENV, "lots")
    with pytest.raises(ValueError, match=r"LIGO_FAST_MEMORY_BUDGET must be a number of bytes .* got 'lots'"):
        ligo_fast.grow(build("BertForMaskedLM", small_cfg), large_cfg)
    with pytest.raises(ValueError, match="memory_budget must be a number of bytes"):
        ligo_fast.LiGOConfig(memory_budget=-1)


@pytest.mark.parametrize(
    "text, n", [("17179869184", 2**34), ("16GiB", 2**34), ("512 MiB", 2**29), ("8e9", 8 * 10**9), ("2GB", 2 * 10**9)]
)
def test_memory_budget_values(text, n):
    from ligo_fast.serialization import parse_bytes

    assert parse_bytes(text, "LIGO_FAST_MEMORY_BUDGET") == n


@pytest.mark.parametrize("version", [1, 2])
def test_the_cgroup_limit_counts_as_free_memory(tmp_path, version):
    """A container's memory limit is invisible to MemAvailable: what it leaves (limit - usage) bounds the budget,
    the smallest over the process's cgroup and its parents."""
    from ligo_fast import memory

    proc = tmp_path / "cgroup"
    if version == 2:
        proc.write_text("0::/job/step\n")
        leaf, parent = tmp_path / "job" / "step", tmp_path / "job"
        names = ("memory.max", "memory.current")
    else:
        proc.write_text("4:memory:/job/step\n3:cpu:/\n")
        leaf, parent = tmp_path / "memory" / "job" / "step", tmp_path / "memory" / "job"
        names = ("memory.limit_in_bytes", "memory.usage_in_bytes")
    leaf.mkdir(parents=True)
    (leaf / names[0]).write_text("max\n" if version == 2 else f"{2**63 - 4096}\n")  # no limit of its own
    (leaf / names[1]).write_text("1000\n")
    (parent / names[0]).write_text(f"{3 * 2**30}\n")
    (parent / names[1]).write_text(f"{2**30}\n")
    assert memory.cgroup_available(str(tmp_path), str(proc)) == 2 * 2**30
    (parent / names[0]).write_text("max\n" if version == 2 else f"{2**63 - 4096}\n")
    assert memory.cgroup_available(str(tmp_path), str(proc)) is None
    assert memory.cgroup_available(str(tmp_path), str(tmp_path / "absent")) is None


def test_a_growth_that_cannot_fit_fails_before_allocating(monkeypatch):
    import transformers as T

    from ligo_fast import spec

    built = []
    monkeypatch.setattr(spec, "empty_parameters", lambda *a, **k: built.append("large model") or 1 / 0)
    monkeypatch.setattr(spec, "_initial", lambda *a, **k: built.append("operator tensor") or 1 / 0)

    small_cfg, _ = configs("LlamaForCausalLM")
    huge = T.LlamaConfig(
        **{
            **small_cfg.to_dict(),
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 1000,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
        }
    )
    small = build("LlamaForCausalLM", small_cfg)
    with pytest.raises(MemoryError, match=r"does not fit: .*eager .* GiB, lean .* GiB"):
        ligo_fast.grow(small, huge)
    assert not built, f"allocated before failing: {built}"  # (its time: benchmarks/RESULTS.md)


def test_old_configs_with_a_removed_option_still_load():
    cfg = ligo_fast.LiGOConfig.from_dict({**ligo_fast.LiGOConfig().to_dict(), "lean_min_mb": 64.0})
    assert cfg == ligo_fast.LiGOConfig()


def test_factored_linear_matches_the_produced_weight():
    torch.manual_seed(1)
    x, Wm = torch.randn(5, 3, 11, dtype=torch.float64), torch.randn(6, 7, dtype=torch.float64)
    Eo, Ei = torch.randn(3, 6, dtype=torch.float64), torch.randn(4, 7, dtype=torch.float64)
    R, b = torch.randn(9, 11, dtype=torch.float64), torch.randn(9, dtype=torch.float64)
    W = torch.cat([torch.eye(6, dtype=torch.float64), Eo]) @ Wm @ torch.cat([torch.eye(7, dtype=torch.float64), Ei]).T
    torch.testing.assert_close(factored_linear(x, Wm, Eo, Ei, R, b), x @ (W + R).T + b)
    torch.testing.assert_close(factored_linear(x[..., :7], Wm, None, None, None, None), x[..., :7] @ Wm.T)


def test_cost_model_break_even():
    # square growth: factored is cheaper in FLOPs at any token count (2a-1 < a^2), so no break-even on a GPU
    assert break_even_tokens(512, 512, 768, 768, 6, 2, H200) is None
    # an FFN-out-like rectangle (in side 4x larger) flips to materialising at large token counts
    T = break_even_tokens(512, 2048, 768, 3072, 6, 2, H200)
    assert T is not None and 1 < T < 10**7
    mat, fact = costs(4 * T, 512, 2048, 768, 3072, 6, 2, H200)
    assert mat < fact
    mat, fact = costs(max(T // 4, 1), 512, 2048, 768, 3072, 6, 2, H200)
    assert fact < mat
    assert break_even_tokens(64, 256, 96, 384, 2, 4, CPU) is not None


def test_cost_model_per_device_and_dtype(monkeypatch):
    """An H100 is costed with its own bandwidth (not the H200's), float32 products with a float32 rate (TF32 only
    when torch allows TF32 matmuls), not the 16-bit one; and the rate moves the break-even."""
    from ligo_fast.factored import H100, device_model

    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H100 80GB HBM3")
    assert device_model(cuda) is H100 and H100.bandwidth < H200.bandwidth
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H200")
    assert device_model(cuda) is H200 and device_model(cuda, 2) is H200
    matmul, tf32 = torch.backends.cuda.matmul, torch.backends.cuda.matmul.allow_tf32
    try:
        matmul.allow_tf32 = False
        fp32 = device_model(cuda, 4)
        assert fp32.flops == H200.fp32 and fp32.bandwidth == H200.bandwidth and H200.flops / fp32.flops > 10
        assert device_model(cuda, 8).flops == H200.fp32 / 2
        matmul.allow_tf32 = True
        assert device_model(cuda, 4).flops == H200.tf32
    finally:
        matmul.allow_tf32 = tf32
    assert device_model(torch.device("cpu"), 4) is CPU
    shape = (512, 2048, 768, 3072, 6, 4)
    assert break_even_tokens(*shape, device_model(cuda, 4)) != break_even_tokens(*shape, H200)


def test_auto_mode_follows_the_cost_model(monkeypatch):
    import transformers as T

    from ligo_fast import memory

    # the decision does not depend on the memory free now (the tests' budget is pinned): a busy machine made the
    # 262k-token batch go memory-lean, which allows no one-side forms, and this test fail
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1)

    small_cfg, large_cfg = configs("BertForMaskedLM")
    small_cfg = T.BertConfig(**{**small_cfg.to_dict(), "intermediate_size": 128})  # FFN 4x the width
    large_cfg = T.BertConfig(**{**large_cfg.to_dict(), "intermediate_size": 192})
    model = ligo_fast.grow(build("BertForMaskedLM", small_cfg), large_cfg, linear_mode="auto")
    few = model.factored_plan((), {"input_ids": torch.ones(1, 2, dtype=torch.long)})
    many = model.factored_plan((), {"input_ids": torch.ones(512, 512, dtype=torch.long)})
    slots = model.plan.slots
    forms = {slots[i].mod.path: f for i, f in few.items()}
    assert [f for i, f in few.items() if slots[i].layered] == ["factored"] * 6  # 2 tokens: nothing produced
    # many tokens: the FFN rectangles produce their narrow side only (cheaper per token than either extreme)
    forms = {slots[i].mod.path: f for i, f in many.items()}
    assert forms["intermediate.dense"] == "out" and forms["output.dense"] == "in"
    # a 2-token batch widens its looked-up rows instead of producing the vocabulary table (and its tied head);
    # 262k tokens of a 99-row vocabulary produce the table
    assert "bert.embeddings.word_embeddings" in {slots[i].mod.path for i in few}
    assert "bert.embeddings.word_embeddings" not in forms
    with pytest.raises(ValueError, match="unknown linear_mode"):
        ligo_fast.grow(build("BertForMaskedLM", small_cfg), large_cfg, linear_mode="fast")


def test_factored_layers_reading_one_input_share_its_expansion(monkeypatch):
    from ligo_fast import factored

    shared: dict = {}
    x = torch.randn(4, 11, dtype=torch.float64)
    Ei = torch.randn(4, 7, dtype=torch.float64)
    Wq, Wk = torch.randn(6, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    calls = []
    real_matmul = torch.Tensor.__matmul__
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: calls.append(b.shape) or real_matmul(a, b))
    q = factored.factored_linear(x, Wq, None, Ei, None, None, shared)
    k = factored.factored_linear(x, Wk, None, Ei, None, None, shared)
    monkeypatch.undo()
    assert calls.count((4, 7)) == 1  # x[:, 7:] @ E_in ran once for both layers
    torch.testing.assert_close(q, factored.factored_linear(x, Wq, None, Ei, None, None))
    torch.testing.assert_close(k, factored.factored_linear(x, Wk, None, Ei, None, None))
    other = torch.randn(4, 11, dtype=torch.float64)  # another input: recomputed, not a stale hit
    torch.testing.assert_close(
        factored.factored_linear(other, Wq, None, Ei, None, None, shared),
        factored.factored_linear(other, Wq, None, Ei, None, None),
    )


def test_factored_embedding_matches_the_produced_table():
    """Forward and gradients (to the small table and E) of the widened lookup equal those of the produced table,
    padding row included (it passes no gradient in either form)."""
    from ligo_fast.factored import factored_embedding

    torch.manual_seed(2)
    W = torch.randn(13, 5, dtype=torch.float64, requires_grad=True)
    E = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[0, 3, 12, 3], [7, 0, 0, 11]])
    g = torch.randn(2, 4, 9, dtype=torch.float64)
    for pad in (None, 0, 3):
        table = torch.cat([torch.eye(5, dtype=torch.float64), E]) @ W.T  # (9, 13): B W^T
        ref = torch.nn.functional.embedding(ids, table.T, pad)
        ref_grads = torch.autograd.grad((ref * g).sum(), (W, E))
        out = factored_embedding(ids, W, E, pad)
        grads = torch.autograd.grad((out * g).sum(), (W, E))
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        for a, b in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        if pad is not None:
            assert grads[0][pad].abs().max() == 0 and grads[0].abs().sum() > 0


@pytest.mark.parametrize("name", ["BertForMaskedLM", "LlamaForCausalLM", "GPT2LMHeadModel", "Gemma3ForCausalLM"])
def test_factored_vocabulary_and_tied_head_match_materialised(name):
    """The vocabulary table and the LM head (tied in BERT and GPT-2, untied in Llama and this Gemma) run factored,
    the small model trained too, with padding tokens in the batch: loss and every gradient equal the materialised run
    (float64). Gemma's table is scaled by sqrt(hidden) in its own forward: the factored lookup scales it too."""
    torch.manual_seed(0)
    small_cfg, large_cfg = configs(name)
    small_cfg.pad_token_id = large_cfg.pad_token_id = 1
    small = build(name, small_cfg).double()
    ids = inputs(name)["input_ids"]
    ids[:, 2] = 1

    def run(mode):
        model = ligo_fast.grow(small, large_cfg, seed=0, depth_init="rand", train_small=True, linear_mode=mode)
        model.double().eval()  # the operator's own tensors too
        picked = {model.plan.slots[i].mod.path for i in model.factored_plan((), {"input_ids": ids})}
        out = main_output(model(input_ids=ids))
        (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum().backward()
        return picked, out.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    picked, out, grads = run("factored")
    none, ref, ref_grads = run("materialize")
    assert not none
    vocab = {"BertForMaskedLM": "bert.embeddings.word_embeddings", "GPT2LMHeadModel": "transformer.wte"}
    assert vocab.get(name, "model.embed_tokens") in picked
    if name.startswith(("Llama", "Gemma3")):
        assert "lm_head" in picked  # untied: its own global linear
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert grads.keys() == ref_grads.keys()
    for k in grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-9, atol=1e-10, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("name", ["BertForMaskedLM", "LlamaForCausalLM"])
@pytest.mark.parametrize("form", ["out", "in"])
def test_one_side_produced_forms_match_materialised(name, form, monkeypatch):
    """Every linear whose both sides grow runs in a one-side form (the other side per token): output and every
    operator gradient equal the materialised run (float64)."""
    from ligo_fast import factored

    torch.manual_seed(0)
    small_cfg, large_cfg = configs(name)
    small = build(name, small_cfg).double()
    ids = inputs(name)["input_ids"]

    def run(mode):
        model = ligo_fast.grow(small, large_cfg, seed=0, depth_init="rand", linear_mode="materialize")
        model.double().eval()
        out = main_output(model(input_ids=ids))
        (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum().backward()
        return out.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    ref, ref_grads = run("materialize")

    def forced(mode, slots, *a, **k):
        both = [i for i in factored.candidates(slots) if slots[i].view_w[0] < slots[i].shape_w[0]]
        both = [i for i in both if slots[i].view_w[1] < slots[i].shape_w[1]]
        picked[:] = both
        return dict.fromkeys(both, form)

    picked: list[int] = []
    monkeypatch.setattr(factored, "choose", forced)
    out, grads = run("forced")
    assert len(picked) >= 4  # the block linears (and the head's transform) ran one-side
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert grads.keys() == ref_grads.keys()
    for k in grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-9, atol=1e-10, msg=lambda m, k=k: f"{k}: {m}")


def test_cost_model_picks_one_side_forms_for_ffn_rectangles_at_many_tokens():
    from ligo_fast.factored import form_costs

    # the BERT-Base FFN (512 -> 768 wide, 2048 -> 3072 inner) at 8 x 128 tokens on the CPU model
    up = form_costs(1024, 2048, 512, 3072, 768, 6, 4, CPU)
    down = form_costs(1024, 512, 2048, 768, 3072, 6, 4, CPU)
    assert min(up, key=up.get) == "out" and min(down, key=down.get) == "in"
    assert set(form_costs(1024, 512, 512, 512, 768, 6, 4, CPU)) == {"materialize", "factored"}  # one side grows


def test_an_embedding_with_its_own_forward_runs_factored_only_when_described():
    # Gemma's table is multiplied by sqrt(hidden) in the subclass's forward: a factored lookup would drop that unless
    # the description declares it (Module.output_scale)
    scaled = T.models.gemma3.modeling_gemma3.Gemma3TextScaledWordEmbedding(10, 4, 0, embed_scale=2.0)
    assert not module_ok(scaled) and module_ok(scaled, scaled=True) and module_ok(torch.nn.Embedding(10, 4))


def test_info_reports_the_memory_budget(monkeypatch):
    from ligo_fast import info, memory

    monkeypatch.setenv(memory.BUDGET_ENV, "3GiB")
    assert "memory budget on cpu: 3.0 GiB (LIGO_FAST_MEMORY_BUDGET" in info._budget_line()
    monkeypatch.setenv(memory.BUDGET_ENV, "lots")
    assert "memory budget on cpu: INVALID (LIGO_FAST_MEMORY_BUDGET must be" in info._budget_line()


def test_execution_options_are_split_from_the_structure(tmp_path):
    """lean, linear_mode and memory_budget are execution options: LiGOConfig still takes them (its ``execution``),
    ligo_config.json no longer records them (every key it writes is one older versions know), and files that older
    versions wrote with them still load, into the options."""
    from ligo_fast.config import EXECUTION_FIELDS, ExecutionOptions

    cfg = ligo_fast.LiGOConfig(lean=True, linear_mode="factored", memory_budget=12345, tie=False)
    assert cfg.execution == ExecutionOptions(lean=True, linear_mode="factored", memory_budget=12345)
    saved = cfg.to_dict()
    assert not set(EXECUTION_FIELDS) & set(saved) and saved["tie"] is False
    assert set(saved) <= {f.name for f in dataclasses.fields(ligo_fast.LiGOConfig)}  # an older reader's keys
    old = ligo_fast.LiGOConfig.from_dict({**saved, "lean": False, "linear_mode": "materialize", "memory_budget": 9})
    assert old.execution == ExecutionOptions(lean=False, linear_mode="materialize", memory_budget=9)
    assert old.tie is False
    for bad, match in [({"linear_mode": "fast"}, "unknown linear_mode"), ({"lean": "yes"}, "lean must be"),
                       ({"memory_budget": 0}, "memory_budget must be")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            ExecutionOptions(**bad)
        with pytest.raises(ValueError, match=match):
            ligo_fast.LiGOConfig(**bad)
    # a grown model saved and loaded: the structure round-trips, the options are the loader's defaults
    small_cfg, large_cfg = configs("BertForMaskedLM")
    small = build("BertForMaskedLM", small_cfg)
    model = ligo_fast.grow(small, large_cfg, linear_mode="materialize", seed=3)
    model.save_operator(tmp_path / "op")
    again = ligo_fast.load_operator(tmp_path / "op", small, large_cfg)
    assert again.ligo_config.to_dict() == model.ligo_config.to_dict()
    assert again.ligo_config.execution == ExecutionOptions()


def test_factored_slots_unbind_a_shared_per_layer_tensor_once():
    """gate/up/down read the same per-layer ffn width matrix: through one unbind, whose backward sums the three
    slots' gradients of a layer as they come; an unbind per slot held a full-size gradient of the tensor per slot
    until its last layer (the factored step's peak, benchmarks/results/bench_fsdp_growth_2026-12-06.md)."""
    torch.manual_seed(0)
    small_cfg, large_cfg = configs("LlamaForCausalLM")
    model = ligo_fast.grow(build("LlamaForCausalLM", small_cfg), large_cfg, seed=0, linear_mode="factored")
    loss = main_output(model(**inputs("LlamaForCausalLM"))).float().pow(2).mean()
    assert model.factored_plan((), inputs("LlamaForCausalLM")), "no block linear ran factored"
    unbinds: dict[int, int] = {}  # id of a leaf tensor -> UnbindBackward nodes reading it
    seen, todo = set(), [loss.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        nxt = [f for f, _ in node.next_functions]
        if type(node).__name__.startswith("UnbindBackward") and hasattr(nxt[0], "variable"):
            unbinds[id(nxt[0].variable)] = unbinds.get(id(nxt[0].variable), 0) + 1
        todo += nxt
    per_layer = {id(p): n for n, p in model.named_parameters() if p.dim() == 3}
    assert any("ffn" in per_layer.get(k, "") for k in unbinds), "no per-layer ffn width matrix unbound"
    assert {per_layer.get(k, k): c for k, c in unbinds.items() if c > 1} == {}


@pytest.mark.parametrize("lean", [True, False])
def test_factored_layers_keep_no_depth_mix_for_backward(monkeypatch, lean):
    """In memory-lean mode a factored linear forms its layer's depth mix when it runs and again in its backward
    (factored.Mix), every layer into one scratch tensor per shape (fresh per-layer mixes, freed at once, grew the
    heap of glibc's default allocator: benchmarks/results/bench_fsdp_growth_2026-12-06.md, sessions 5-6): after the
    forward no mix but that one tensor is alive, the backward forms into it again, and it dies with the graph;
    without lean mode one call mixes every layer and autograd keeps it (cheaper in calls). Either way the head of a
    function-preserving start scales its input by its fixed scale and forms no (vocab, d) copy of its weight. The
    same logits and gradients as with every weight produced."""
    from ligo_fast import factored

    made: list[tuple[tuple[int, ...], weakref.ref]] = []  # (shape, the tensor) of every mix formed by one call
    scratch: list[weakref.ref] = []  # every layer mix formed in a scratch (memory-lean mode)
    real, real_into = factored.ops.ligo_expand, factored._mix_into

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        made.append((tuple(out.shape), weakref.ref(out)))
        return out

    def recording_into(*args, **kwargs):
        out = real_into(*args, **kwargs)
        if tuple(out.shape) == (40, 32):  # the gate/up weights' mixes
            scratch.append(weakref.ref(out))
        return out

    monkeypatch.setattr(factored.ops, "ligo_expand", recording)
    monkeypatch.setattr(factored, "_mix_into", recording_into)
    llama = dict(vocab_size=61, tie_word_embeddings=False, num_key_value_heads=2)  # widths x2: the head has a scale
    small = T.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=40, num_attention_heads=4, **llama)
    large = T.LlamaConfig(num_hidden_layers=3, hidden_size=64, intermediate_size=80, num_attention_heads=8, **llama)
    torch.manual_seed(0)
    model = ligo_fast.grow(T.LlamaForCausalLM(small), large, seed=0, linear_mode="factored", lean=lean)
    ids = torch.randint(0, 61, (2, 7), generator=torch.Generator().manual_seed(1))
    loss = model(input_ids=ids).logits.float().pow(2).mean()
    gc.collect()
    mixes = [ref for shape, ref in made if shape[-2:] == (40, 32)]  # the gate/up weights' mixes of one call
    assert bool(mixes) != lean and any(ref() is not None for ref in mixes) != lean
    if lean:  # 3 layers x gate, up: all formed in one tensor, alive until backward forms in it again
        assert len(scratch) == 6 and {id(ref()) for ref in scratch} == {id(scratch[0]())} != {id(None)}
    else:
        assert not scratch
    loss.backward()
    assert len(scratch) == (12 if lean else 0) and len({id(ref()) for ref in scratch}) <= 1
    assert model.plan.slots[-1].scale_w is not None and model.factored_plan((), {"input_ids": ids})
    assert model.lean_now((), {"input_ids": ids}) == lean
    assert not any(shape == (1, 61, 32) for shape, _ in made), "the head's weight times its scale was formed"
    mixed = [p for n, p in model.named_parameters() if n.startswith("op.depth__") and "proj" in n]
    assert len(mixed) == 7 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in mixed)
    value = loss.detach()
    del loss
    gc.collect()
    assert all(ref() is None for ref in scratch), "the scratch outlived the step's graph"
    grads = {n: p.grad for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.execution_options = ligo_fast.ExecutionOptions(linear_mode="materialize", lean=False)
    want = model(input_ids=ids).logits
    want.float().pow(2).mean().backward()
    assert not model.factored_plan((), {"input_ids": ids})
    torch.testing.assert_close(value, want.float().pow(2).mean())
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.parametrize("train_small", [False, True])
def test_mixes_formed_in_one_scratch_match_autograd(train_small):
    """Two layers' depth mixes of one shape, formed in one factored.Scratch (each layer's backward forms its own
    again in it): the output and the gradients of the input, the depth rows and (when they train) the small weights
    equal plain autograd's through ``Σ_j depth[j] W[j]``, in float64, on odd shapes and a batch of sequences."""
    from ligo_fast.factored import Mix, Scratch, _times_t

    g = torch.Generator().manual_seed(3)
    W = torch.randn(3, 5, 5, dtype=torch.float64, generator=g).requires_grad_(train_small)
    depth = torch.randn(2, 3, dtype=torch.float64, generator=g, requires_grad=True)
    u = torch.randn(2, 7, 5, dtype=torch.float64, generator=g, requires_grad=True)
    scratch = Scratch()
    a, b = depth.unbind(0)
    y = _times_t(_times_t(u, Mix(W, a, scratch=scratch)), Mix(W, b, scratch=scratch))
    want = u @ torch.einsum("j,joi->oi", a, W).mT @ torch.einsum("j,joi->oi", b, W).mT
    torch.testing.assert_close(y, want)
    up = torch.randn(y.shape, dtype=torch.float64, generator=g)
    inputs = [u, depth, W] if train_small else [u, depth]
    for got, exp, name in zip(
        torch.autograd.grad(y, inputs, up), torch.autograd.grad(want, inputs, up), "u depth W".split(), strict=False
    ):
        torch.testing.assert_close(got, exp, msg=lambda m, name=name: f"{name}: {m}")
    assert len(scratch._tensors) == 1  # the mix, then its gradient: one tensor for both layers


def test_mix_in_scratch_of_bfloat16_weights_rounds_as_ligo_expand():
    """A 16-bit small weight's mix is accumulated in float32 and rounded to the weight's dtype, as
    ops.ligo_expand's (Mix.form); the product's depth gradient is the one autograd gives through Mix.form."""
    from ligo_fast.factored import Mix, Scratch, _mix_into, _times_t

    g = torch.Generator().manual_seed(4)
    W = torch.randn(4, 6, 9, generator=g).bfloat16()
    depth = torch.randn(4, generator=g, requires_grad=True)
    got = _mix_into(Scratch(), W, depth.detach(), torch.bfloat16)
    torch.testing.assert_close(got, Mix(W, depth.detach()).form(), atol=0, rtol=2**-8)
    u = torch.randn(5, 9, generator=g).bfloat16()
    up = torch.randn(5, 6, generator=g).bfloat16()
    (dd,) = torch.autograd.grad(_times_t(u, Mix(W, depth, scratch=Scratch())), depth, up)
    (want,) = torch.autograd.grad(u @ Mix(W, depth).form().mT, depth, up)
    assert dd.dtype == torch.float32
    torch.testing.assert_close(dd, want, rtol=1e-5, atol=1e-5)


def _held_step(name, lean=True, **options):
    """``_step`` with the per-layer width matrices held one parameter per large layer (``hold_per_layer``, what
    ``distributed.shard(per_block=True)`` does before sharding); gradients stacked back under the stacked names."""
    from ligo_fast.lean import chunk_layers

    torch.manual_seed(0)
    small_cfg, large_cfg = configs(name)
    model = ligo_fast.grow(build(name, small_cfg), large_cfg, seed=0, depth_init="rand", **options).eval()
    model.execution_options = ligo_fast.ExecutionOptions(lean=lean, linear_mode=options.get("linear_mode", "auto"))
    holders = model.hold_per_layer(chunk_layers(model.L2, 1))  # one layer each (shard(per_block=True)'s default)
    out = main_output(model(**inputs(name)))
    out.float().pow(2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for stacked, places in model.__dict__["_row_home"].items():
        grads[f"op.{stacked}"] = torch.stack([grads.pop(f"op_rows.{i}.{a}") for i, a in places])
    return model, holders, out.detach(), grads


@pytest.mark.parametrize("name", ["LlamaForCausalLM", "GPT2LMHeadModel", "BertForMaskedLM"])
@pytest.mark.parametrize("linear_mode", ["factored", "materialize"])
def test_rows_held_per_layer_give_the_stacked_numbers(name, linear_mode):
    """Each layer reads its rows from its holder when it runs (factored linears and lean chunks): the same outputs,
    operator gradients, state dict and materialised model as the stacked tensors, with a residual too."""
    ref, ref_out, ref_grads = _step(name, lean=True, residual=True, linear_mode=linear_mode)
    model, holders, out, grads = _held_step(name, residual=True, linear_mode=linear_mode)
    assert len(holders) == model.L2 > 2 and all(any(True for _ in h.parameters()) for h in holders)
    assert model.lean_chunk((), inputs(name)) == 1 < ref.lean_chunk((), inputs(name))  # lean's chunks: the holders'
    assert not any(k.startswith("op_rows") for k in model.state_dict())
    torch.testing.assert_close(out, ref_out)
    assert grads.keys() == ref_grads.keys()
    for k, g in ref_grads.items():
        torch.testing.assert_close(grads[k], g, msg=lambda m, k=k: f"{k}: {m}")
    sd, ref_sd = model.state_dict(), ref.state_dict()
    assert sd.keys() == ref_sd.keys() and all(torch.equal(sd[k], ref_sd[k]) for k in sd)
    got, want = model.materialize().state_dict(), ref.materialize().state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


def test_rows_held_per_layer_refuse_what_they_cannot_do(tmp_path):
    """Held per layer: the eager path, load_state_dict and the plain save_operator fail with one clear line."""
    model, _, _, _ = _held_step("LlamaForCausalLM")
    model.execution_options = ligo_fast.ExecutionOptions(lean=False)
    with pytest.raises(ValueError, match="memory-lean mode"):
        model(**inputs("LlamaForCausalLM"))
    with pytest.raises(RuntimeError, match="held per layer"):
        model.load_state_dict(model.state_dict())
    with pytest.raises(RuntimeError, match="save_operator_distributed"):
        model.save_operator(tmp_path / "op")
    with pytest.raises(RuntimeError, match="already"):
        model.hold_per_layer([range(model.L2)])
