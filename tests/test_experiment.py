"""The growth-savings experiment (ligo_fast.apps.savings): FLOP accounting by hand, the corpus split, the schedules,
the aggregation of several runs, a toy end-to-end run of all five methods (outputs written into tmp_path), and its
command line (method selection, seeds, the untracked default run directory, errors)."""

from __future__ import annotations

import json
import logging
import math
import random
import shutil

import _models
import pytest
import torch
from torch import nn
from transformers import Gemma3TextConfig, GPT2Config, LlamaConfig

import ligo_fast
from ligo_fast.apps import data, demo
from ligo_fast.apps.savings import aggregate, axes, corpus, flops, models, presets, report, results, run, schedule
from ligo_fast.apps.savings.train import EvalPoint
from ligo_fast.budget import operator_budget


# ------------------------------------------------------------------------------------------ FLOP accounting
def test_llama_flops_match_hand_count():
    # d=8 hidden, 2 layers, 2 heads of size 4 (a = k = 8), MLP f=12, vocab V=16, sequence T=4, batch B=3.
    cfg = LlamaConfig(
        vocab_size=16,
        hidden_size=8,
        intermediate_size=12,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4,
    )
    f = flops.forward_flops_per_token(cfg, seq_len=4)
    qkvo = 2 * 8 * 8 + 2 * 8 * 8 + 2 * 8 * 8 + 2 * 8 * 8  # Q, K, V, O: 128 each = 512
    attention = 2 * 4 * 8 + 2 * 4 * 8  # Q K^T over T=4 keys, then P V: 64 + 64 = 128
    mlp = 2 * 8 * 12 + 2 * 8 * 12 + 2 * 8 * 12  # gate, up, down: 192 each = 576
    head = 2 * 8 * 16  # 256
    assert (qkvo, attention, mlp, head) == (512, 128, 576, 256)
    assert f["qkvo"] == qkvo and f["attention"] == attention and f["mlp"] == mlp and f["head"] == head
    assert f["total"] == 2 * (512 + 128 + 576) + 256 == 2688
    # training step = forward + backward (2x forward) = 3 x 2688 FLOPs per token, over B*T = 12 tokens
    assert flops.train_step_flops(cfg, batch_size=3, seq_len=4) == 3 * 2688 * 12 == 96768


def test_llama_flops_grouped_query_attention():
    # 4 query heads of size 4 (a=16) but 2 key/value heads (k=8): K and V shrink, the rest does not.
    cfg = LlamaConfig(
        vocab_size=16,
        hidden_size=16,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    f = flops.forward_flops_per_token(cfg, seq_len=2)
    assert f["qkvo"] == 2 * 16 * 16 + 2 * 16 * 8 + 2 * 16 * 8 + 2 * 16 * 16  # 1536
    assert f["attention"] == 2 * 2 * 16 * 2  # 128


def test_gemma3_flops_use_its_own_head_dim():
    # Gemma 3: head_dim is not hidden / heads (here 6 against 8 / 2 = 4): a = 2 * 6 = 12, k = 1 * 6; GeGLU MLP.
    cfg = Gemma3TextConfig(
        vocab_size=16,
        hidden_size=8,
        intermediate_size=12,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=6,
    )
    f = flops.forward_flops_per_token(cfg, seq_len=3)
    assert f["qkvo"] == 2 * 8 * 12 + 2 * 8 * 6 + 2 * 8 * 6 + 2 * 12 * 8  # 576
    assert f["attention"] == 2 * 3 * 12 * 2  # 144
    assert f["mlp"] == 3 * 2 * 8 * 12  # 576
    assert f["total"] == 2 * (576 + 144 + 576) + 2 * 8 * 16


def test_gpt2_flops_match_hand_count():
    # d=8, 1 layer, MLP 4d=32 (two matrices), V=10, T=3
    cfg = GPT2Config(vocab_size=10, n_embd=8, n_layer=1, n_head=2, n_positions=3)
    f = flops.forward_flops_per_token(cfg, seq_len=3)
    assert f["qkvo"] == 4 * 2 * 8 * 8  # 512
    assert f["attention"] == 2 * 2 * 3 * 8  # 96
    assert f["mlp"] == 2 * 2 * 8 * 32  # 1024
    assert f["total"] == 512 + 96 + 1024 + 2 * 8 * 10  # 1792


class _Params(nn.Module):
    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        super().__init__()
        self.p = nn.ParameterDict({k.replace(".", "_"): nn.Parameter(torch.zeros(s)) for k, s in shapes.items()})
        self._names = dict(shapes)

    def named_parameters(self, *a, **k):
        for name in self._names:
            yield name, self.p[name.replace(".", "_")]


def test_production_flops_match_hand_count():
    # small: one layer with W (2, 3) and a norm (2,), embedding (5, 2); large: two layers (4, 6) / (4,), (5, 4)
    small = _Params({"layers.0.w": (2, 3), "layers.0.norm": (2,), "emb": (5, 2)})
    large = _Params(
        {"layers.0.w": (4, 6), "layers.1.w": (4, 6), "layers.0.norm": (4,), "layers.1.norm": (4,), "emb": (5, 4)}
    )
    per_layer_w = 2 * 1 * 2 * 3 + 2 * (4 - 2) * 2 * 3 + 2 * 4 * (6 - 3) * 3  # depth 12 + rows 24 + cols 72
    per_layer_norm = 2 * 1 * 2 * 1 + 2 * (4 - 2) * 2 * 1  # depth 4 + rows 8
    emb = 2 * 5 * (4 - 2) * 2  # only the feature columns grow: 40
    assert (per_layer_w, per_layer_norm, emb) == (108, 12, 40)
    assert flops.production_flops(small, large) == 2 * 108 + 2 * 12 + 40 == 280
    cfg = LlamaConfig(
        vocab_size=16,
        hidden_size=8,
        intermediate_size=12,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    assert flops.train_step_flops(cfg, 3, 4) == 96768


def _hand_linear(T: int, L1: int, o1: int, i1: int, o2: int, i2: int, form: str) -> int:
    """Forward + backward FLOPs of one grown linear for T tokens, by hand: factored ``((x B_in) Wmix^T) B_out^T``,
    or the weight produced (depth mix, then the cheaper order of the two width products) and run."""
    mix = 2 * L1 * o1 * i1
    if form == "factored":
        return 3 * (mix + 2 * T * i1 * (i2 - i1) + 2 * T * o1 * i1 + 2 * T * (o2 - o1) * o1)
    rows_first = 2 * (o2 - o1) * o1 * i1 + 2 * o2 * (i2 - i1) * i1
    cols_first = 2 * o1 * (i2 - i1) * i1 + 2 * (o2 - o1) * i2 * o1
    return 3 * (mix + min(rows_first, cols_first)) + 3 * 2 * T * o2 * i2


@pytest.mark.parametrize("mode", ["factored", "materialize"])
def test_operator_step_flops_count_the_forms_that_run(mode):
    # small L1 d6 ffn10 h2 -> large L3 d12 ffn20 h4 (untied), batch 2 x 5 tokens
    small_cfg = models.make_config(presets.ModelSize(6, 1, 2, 10), 8)
    large_cfg = models.make_config(presets.ModelSize(12, 3, 4, 20), 8)
    small = models.new_model(small_cfg, 0)
    op = ligo_fast.grow(small, large_cfg, linear_mode=mode)
    B, S, V = 2, 5, small_cfg.vocab_size
    T = B * S
    per_layer = 4 * _hand_linear(T, 1, 6, 6, 12, 12, mode)  # q, k, v, o
    per_layer += 2 * _hand_linear(T, 1, 10, 6, 20, 12, mode) + _hand_linear(T, 1, 6, 10, 12, 20, mode)  # gate, up, down
    head = _hand_linear(T, 1, V, 6, V, 12, mode)
    embedding = 3 * 2 * (T if mode == "factored" else V) * (12 - 6) * 6  # widen the looked-up rows / the table
    attention = 3 * 4 * S * 12 * T * 3  # scores and weighted sum, 3 layers
    got = flops.operator_step_flops(op, large_cfg, B, S)
    assert got == 3 * per_layer + head + embedding + attention
    if mode == "factored":  # cheaper than a plain large step at these few tokens
        assert got < flops.train_step_flops(large_cfg, B, S)


def test_operator_step_flops_of_gemma3_add_its_attention_per_layer():
    # Gemma 3 (qk norms, explicit head_dim): the step is the linears' forms plus 3 x attention over every layer
    small_cfg, large_cfg = _models.configs("Gemma3ForCausalLM")
    op = ligo_fast.grow(_models.build("Gemma3ForCausalLM", small_cfg), large_cfg)
    B, S = 2, 5
    linears = op.linear_step_flops(input_ids=torch.zeros(B, S, dtype=torch.long))
    a = large_cfg.num_attention_heads * large_cfg.head_dim
    attention = 3 * (2 * S * a + 2 * S * a) * large_cfg.num_hidden_layers * B * S
    assert flops.operator_step_flops(op, large_cfg, B, S) == linears + attention > attention


def test_cost_to_reach_interpolates_and_skips_operator_phase():
    P = EvalPoint
    curve = [
        P("operator", 0, 0, 0.0, 0.0, 1.0),  # below target, but operator steps must be paid first
        P("train", 0, 0, 10.0, 1.0, 3.0),
        P("train", 10, 0, 20.0, 3.0, 2.0),
        P("train", 20, 0, 30.0, 5.0, 1.0),
    ]
    assert results.cost_to_reach(curve, 1.5, "flops") == pytest.approx(25.0)
    assert results.cost_to_reach(curve, 1.5, "wall_s") == pytest.approx(4.0)
    assert results.cost_to_reach(curve, 3.5) == 10.0
    assert results.cost_to_reach(curve, 0.5) is None


# ------------------------------------------------------------------------------------------ corpus
def test_split_is_deterministic_and_disjoint():
    files = corpus.stdlib_files()
    assert len(files) > 100 and all(f.suffix == ".py" for f in files)
    assert not any("site-packages" in f.parts for f in files)
    train, val = data.split_files(files, 0.05, seed=0)
    shuffled = list(files)
    random.Random(123).shuffle(shuffled)
    assert data.split_files(shuffled, 0.05, seed=0) == (train, val)  # input order does not matter
    assert not set(train) & set(val)
    assert set(train) | set(val) == set(files)
    assert len(val) == -(-len(files) * 5 // 100)
    assert train == sorted(train) and val == sorted(val)
    assert data.split_files(files, 0.05, seed=1)[1] != val  # the seed chooses the held-out files


def test_corpus_directory_tokens_are_deterministic(tmp_path):
    for i, src in enumerate(corpus.stdlib_files()[:8]):
        shutil.copy(src, tmp_path / f"f{i}.py")
    (tmp_path / ".hidden").write_text("skipped")
    (tmp_path / "blob.bin").write_bytes(b"\0\1\2")
    files = corpus.corpus_files(tmp_path)
    assert [f.name for f in files] == [f"f{i}.py" for i in range(8)]  # no hidden file, no binary file
    a = corpus.load_corpus(tmp_path, val_fraction=0.25, seed=7)
    b = corpus.load_corpus(tmp_path, val_fraction=0.25, seed=7)
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    assert len(a.val_files) == 2 and not set(a.train_files) & set(a.val_files)
    assert a.train.dtype == torch.int16 and int(a.train.max()) <= corpus.EOS and (a.train == corpus.EOS).sum() == 6
    val = data.validation_windows(a.val, 5, 17)
    assert val.shape == (5, 17) and torch.equal(val, data.validation_windows(b.val, 5, 17))


def test_single_file_corpus_splits_by_bytes(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("abcdefghij" * 10)
    c = corpus.load_corpus(f, val_fraction=0.1)
    assert c.train.numel() + c.val.numel() == 101  # 100 bytes + EOS
    assert c.val.numel() >= 2


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture
def one_thread():
    """One torch thread: on a shared, oversubscribed CPU two spinning OpenMP threads run ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def texts(tmp_path):
    """A corpus of 12 stdlib files."""
    d = tmp_path / "corpus"
    d.mkdir()
    for i, src in enumerate(corpus.stdlib_files()[:12]):
        shutil.copy(src, d / f"f{i}.py")
    return d


def test_toy_experiment_end_to_end(tmp_path, texts, one_thread, caplog):
    family = "llama"
    preset = presets.PRESETS["toy"]
    events = []
    with caplog.at_level(logging.INFO, logger=run.__name__):  # stderr is no terminal here: log lines, no bar
        res = run.run_experiment(preset, corpus=texts, on_event=lambda n, d: events.append((n, d.get("method"))))
    assert res.family == family
    assert list(res.methods) == list(presets.METHODS)  # all five, in order; scratch last
    # progress: one line per evaluation (not per step), each naming the phase, the overall step and the loss
    lines = [m for m in caplog.messages if ": val " in m]
    evals = len(res.small_curve) + sum(len(m.curve) for m in res.methods.values())
    total = preset.small_steps + 5 * preset.large_steps + 2 * preset.ligo_steps
    assert len(lines) == evals < total
    assert lines[0] == f"small pretrain 0/{total}: val {res.small_curve[0].val_loss:.3f}"
    assert lines[-1] == f"scratch {total}/{total}: val {res.methods['scratch'].final_loss:.3f}"
    fl = res.flops
    # counted as it runs (the forms the operator picks), at most a plain step plus producing every weight
    assert fl["operator_step"] == res.methods["ligo"].notes["operator_step_flops"]
    assert 0 < fl["operator_step"] <= fl["large_step"] + 3 * fl["production_forward"]
    assert fl["small_step"] == flops.train_step_flops(models.make_config(preset.small, preset.seq_len, family), 4, 32)
    assert res.small_flops == preset.small_steps * fl["small_step"]
    assert res.operator_budget == {
        "steps": 4, "lr": preset.lr, "warmup": 1, "large_steps": 12, "source": "steps", "lr_rule": "large"
    }  # fmt: skip
    assert res.methods["ligo"].notes["operator_lr"] == preset.lr  # the official init: the large lr
    continued = pytest.approx(preset.lr / math.sqrt(preset.small.hidden))  # ligo_fast.budget's continued-training lr
    assert res.methods["ligo_lossless"].notes["operator_lr"] == continued

    for name in presets.OPERATOR_METHODS:
        m = res.methods[name]
        assert m.setup_flops == preset.ligo_steps * fl["operator_step"] and m.operator_steps == preset.ligo_steps
        first_train = m.train_curve[0]
        assert first_train.flops == m.setup_flops and first_train.step == 0
        assert m.curve[-1].flops == m.setup_flops + preset.large_steps * fl["large_step"]
        # materialising does not change the function: the last operator eval == the first training eval
        last_op = [p for p in m.curve if p.phase == "operator"][-1]
        assert last_op.val_loss == pytest.approx(first_train.val_loss, abs=1e-4)
        assert m.notes["val_loss_after_operator"] == pytest.approx(first_train.val_loss, abs=1e-4)
        assert m.notes["val_loss_grown"] == m.curve[0].val_loss and m.curve[0].phase == "operator"
    for name in ("lossless", "stack", "scratch"):
        assert res.methods[name].setup_flops == 0.0 and res.methods[name].operator_steps == 0
    # the noisy lossless start is the small model's function up to its small noise; stacking's is not
    small_loss = res.small_loss
    assert res.methods["lossless"].train_curve[0].val_loss == pytest.approx(small_loss, rel=0.01)
    assert res.methods["ligo_lossless"].notes["val_loss_grown"] == pytest.approx(small_loss, rel=0.01)
    for m in res.methods.values():  # the same token budget for every method
        assert m.curve[-1].tokens == preset.large_steps * preset.batch_size * preset.seq_len
    assert res.methods["scratch"].curve[-1].flops == preset.large_steps * fl["large_step"]
    names = {n for n, _ in events}
    assert {"small_done", "grown", "materialized", "method_done", "method_eval", "operator_eval"} <= names
    assert {m for n, m in events if n == "grown"} == {"ligo", "ligo_lossless", "lossless", "stack"}
    assert {m for n, m in events if n == "materialized"} == set(presets.OPERATOR_METHODS)

    rows = {r["method"]: r for r in res.summary()}
    scratch = rows["scratch"]
    assert scratch["flops"] is not None and scratch["flops_saved"] == pytest.approx(0.0)
    assert scratch["flops"] <= preset.large_steps * fl["large_step"]
    for r in rows.values():
        assert r["operator_share"] == pytest.approx(res.methods[r["method"]].setup_flops / scratch_budget(res))
        if r["flops"] is not None and r["method"] != "scratch":
            assert r["flops_with_small"] == pytest.approx(r["flops"] + res.small_flops)
            assert r["flops_saved"] == pytest.approx(1 - r["flops"] / scratch["flops"])

    md = report.write_table(res, tmp_path / "out" / "table.md", command="pytest toy")
    png = report.plot(res, tmp_path / "out" / "plot.png")
    js = report.write_json(res, tmp_path / "out" / "data.json")
    text = md.read_text()
    assert "pytest toy" in text and "seeds: split=0" in text and "Scratch (no growth)" in text and "speedup" in text
    assert f"tokens per parameter: each large model {res.tokens_per_param:.2f}" in text
    assert "Verdict" in text and "Loss trace" in text and "train steps to target" in text
    assert "4 steps (33.3% of the large steps; steps" in text
    lr = res.methods["ligo_lossless"].notes["operator_lr"]  # each LiGO row's own lr and warm-up, by its start
    assert f"LiGO lr {preset.lr:g}, warm-up 1; LiGO (lossless init) lr {lr:g}, warm-up 4" in text
    for label in (report.METHOD_LABELS[m] for m in presets.METHODS):
        assert f"| {label} |" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    summary = json.loads(js.read_text())["summary"]  # tools read these fields
    assert [r["method"] for r in summary] == list(presets.METHODS)
    assert all(r["flops_saved"] == rows[r["method"]]["flops_saved"] for r in summary)


def scratch_budget(res) -> float:
    return res.methods["scratch"].curve[-1].flops


def test_exact_lossless_start_equals_the_small_model(texts, one_thread):
    # width_init='lossless' (no noise): the large model's training starts from the small model's loss exactly
    preset = presets.PRESETS["toy"].replace(lossless_width="lossless", large_steps=2)
    res = run.run_experiment(preset, corpus=texts, methods=["lossless"], progress=False)
    assert list(res.methods) == ["lossless", "scratch"]
    start = res.methods["lossless"].train_curve[0].val_loss
    assert start == pytest.approx(res.small_loss, rel=1e-5)
    assert res.methods["lossless"].notes["val_loss_grown"] == start


@pytest.mark.parametrize("part", ["depth", "width"])
def test_ligo_train_freezes_the_other_operator_tensors(part):
    # issue 21's ablation 4: the operator phase trains the depth coefficients alone, or the width matrices alone
    small_cfg = models.make_config(presets.PRESETS["toy"].small, 16, "llama")
    small = models.new_model(small_cfg, 0, torch.device("cpu"))
    op = ligo_fast.grow(small, models.grown_config(small_cfg, presets.PRESETS["toy"].large), seed=0)
    before = {t.name: op.tensor(t.name).detach().clone() for t in op.plan.tensors if t.trainable}
    trained = run.trained_tensors(op, part)
    roles = {t.name: t.role for t in op.plan.tensors}
    names = {n for n in before if any(op.tensor(n) is q for q in trained)}
    assert names and names == {n for n in before if roles[n] in presets.LIGO_TRAIN[part]}
    opt = torch.optim.SGD(trained, lr=0.1)
    ids = torch.randint(0, small_cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(3))
    op(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    for n, old in before.items():  # the trained ones moved, the frozen ones did not (and got no gradient)
        assert (not torch.equal(op.tensor(n), old)) == (n in names), n
        assert (op.tensor(n).grad is None) == (n not in names), n
    with pytest.raises(ValueError, match="ligo_train must be one of"):
        run.trained_tensors(op, "heads")


def test_unknown_method_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown method.*bogus.*choose from ligo"):
        run.check_methods(["ligo", "bogus"])
    assert run.check_methods(["stack", "ligo"]) == ["ligo", "stack", "scratch"]  # METHODS order, scratch added


def test_operator_budget_of_a_preset_follows_the_rule_and_its_overrides():
    demo = presets.PRESETS["demo"]
    assert run.budget_of(demo) == operator_budget(400, demo.lr)  # 20 steps at the large lr
    assert run.budget_of(demo.scaled(4)).steps == 80 and demo.scaled(0.5).large_steps == 200
    assert run.budget_of(demo.replace(ligo_steps=7)).steps == 7
    assert run.budget_of(demo.replace(ligo_fraction=0.25)).steps == 100
    assert run.budget_of(demo.replace(ligo_lr=5e-3)).lr == 5e-3
    with pytest.raises(ValueError, match="multiplier"):
        demo.scaled(0)


# ------------------------------------------------------------------------------------------ schedules
def test_schedule_shape():
    s = schedule.Schedule(peak=1.0, warmup=4, decay_end=14, min_frac=0.1)
    assert [s.lr(k) for k in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s.lr(4) == pytest.approx(1.0) and s.lr(9) == pytest.approx(0.55)  # half-way down the cosine
    assert s.lr(14) == pytest.approx(0.1) and s.lr(40) == pytest.approx(0.1)  # flat after the decay
    assert schedule.Schedule(2.0, 0, 10, 0.1).lr(0) == 2.0  # no warm-up: the peak from step 0


def test_grown_schedules():
    p = presets.PRESETS["demo"]
    base = schedule.run_schedule(p, p.large_steps, p.lr)
    assert (base.warmup, base.decay_end, base.peak) == (20, 400, p.lr)
    assert schedule.grown_schedule(p) == base  # default 'same'
    assert schedule.grown_schedule(p.replace(grown_schedule="no-rewarm")) == schedule.Schedule(p.lr, 0, 400, 0.1)
    lemon = schedule.grown_schedule(p.replace(grown_schedule="lemon"))
    assert (lemon.peak, lemon.warmup, lemon.decay_end) == (p.lr, 20, 200)
    with pytest.raises(ValueError, match="unknown grown schedule"):
        schedule.grown_schedule(p.replace(grown_schedule="fast"))
    op = schedule.operator_schedule(operator_budget(400, 1e-3), 0.1)
    assert (op.peak, op.warmup, op.decay_end) == (1e-3, 2, 20)


# ------------------------------------------------------------------------------------------ several runs
def _fake_run(seed: int, large_steps: int, target_steps: dict[str, float | None]) -> results.Result:
    """A Result whose methods reach scratch's final loss (1.0) at the given step (None: never); 1 FLOP per step."""
    methods = {}
    for name, at in target_steps.items():
        end = 1.0 if name == "scratch" else (0.5 if at is not None else 2.0)
        hit = large_steps if at is None or name == "scratch" else at
        curve = [
            EvalPoint("train", 0, 0, 0.0, 0.0, 3.0),
            EvalPoint("train", hit, 0, float(hit), 0.0, 1.0 if at is not None else 2.5),
            EvalPoint("train", large_steps, 0, float(large_steps), 0.0, end),
        ]
        methods[name] = results.MethodResult(name, curve, notes={"val_loss_grown": 3.0})
    return results.Result(
        preset=presets.PRESETS["toy"].replace(large_steps=large_steps),
        seeds=presets.Seeds.from_base(seed),
        family="llama",
        device="cpu",
        corpus="fake",
        small_params=1,
        large_params=2,
        small_curve=[EvalPoint("small", 0, 0, 0.0, 0.0, 3.0)],
        small_flops=0.0,
        small_wall_s=0.0,
        methods=methods,
        flops={},
    )


def test_verdict_ranks_equal_savings_as_a_tie():
    """Equal FLOPs to the target (the default's 0-step depth-only start against LLaMA-Pro's identical one) is a tie,
    not a win for whichever is listed first."""
    tie = report.verdict(_fake_run(1, 100, {"ligo_lossless": 50, "llama_pro": 50, "gstack": 60, "scratch": 100}))
    assert "Ranking: LiGO (lossless init) = LLaMA-Pro > G_stack." in tie
    assert "ties the best non-LiGO growth method" in tie
    win = report.verdict(_fake_run(1, 100, {"ligo_lossless": 40, "llama_pro": 50, "scratch": 100}))
    assert "Ranking: LiGO (lossless init) > LLaMA-Pro." in win and "beats every non-LiGO" in win


def test_report_header_names_a_rows_own_operator_steps():
    """A LiGO row whose start the rule gives other steps than the preset's (a depth-only growth from a
    function-preserving start: 0) says so in the report's operator line; rows at the preset's count do not."""
    res = _fake_run(1, 100, {"ligo": 40, "ligo_lossless": 50, "scratch": 100})
    res.operator_budget = {"steps": 5, "lr": 1e-3, "warmup": 1, "large_steps": 100, "source": "rule"}
    res.methods["ligo"].notes.update(operator_lr=1e-3, operator_warmup=1, operator_steps=5)
    res.methods["ligo_lossless"].notes.update(operator_lr=1e-4, operator_warmup=0, operator_steps=0)
    head = "\n".join(report._setup_lines(res, "pytest"))
    assert "LiGO lr 0.001, warm-up 1; LiGO (lossless init) 0 steps (rule for this start), lr 0.0001, warm-up 0" in head


def test_aggregate_means_wins_and_goal():
    runs = [
        _fake_run(1, 100, {"ligo": 40, "lossless": 50, "stack": 70, "scratch": 100}),
        _fake_run(2, 100, {"ligo": 50, "lossless": 45, "stack": None, "scratch": 100}),
        _fake_run(1, 200, {"ligo": 80, "lossless": 120, "stack": 150, "scratch": 200}),
        _fake_run(2, 200, {"ligo": 100, "lossless": 90, "stack": 160, "scratch": 200}),
    ]
    rows = {(r["large_steps"], r["method"]): r for r in aggregate.sweep_rows(runs, base_steps=100)}
    ligo = rows[(100, "ligo")]
    assert ligo["per_seed"] == {1: pytest.approx(0.6), 2: pytest.approx(0.5)} and ligo["budget"] == 1.0
    assert ligo["mean"] == pytest.approx(0.55) and ligo["sd"] == pytest.approx(0.0707107, rel=1e-5)
    stack = rows[(100, "stack")]
    assert stack["per_seed"][2] is None and (stack["reached"], stack["n"]) == (1, 2)
    assert stack["mean"] == pytest.approx(0.3) and stack["sd"] == 0.0
    assert rows[(200, "lossless")]["budget"] == 2.0
    wins = {(w["large_steps"], w["seed"]): w for w in aggregate.seed_wins(runs)}
    assert wins[(100, 1)]["winner"] == "ligo" and wins[(100, 1)]["lead"]["ligo"] == pytest.approx(0.1)
    # stacking missed (saved less than nothing): the lead is over the best method that reached the target
    assert wins[(100, 2)]["lead"]["ligo"] == pytest.approx(-0.05) and not wins[(100, 2)]["lead_is_bound"]
    alone = aggregate.seed_wins([_fake_run(3, 100, {"ligo": 70, "lossless": None, "stack": None, "scratch": 100})])
    assert alone[0]["winner"] == "ligo" and alone[0]["lead"]["ligo"] == pytest.approx(0.3) and alone[0]["lead_is_bound"]
    assert ">=+30.0" in report.format_sweep(
        [_fake_run(3, 100, {"ligo": 70, "lossless": None, "stack": None, "scratch": 100})], base_steps=100
    )
    assert wins[(200, 2)]["winner"] == "lossless" and wins[(200, 2)]["lead"]["ligo"] == pytest.approx(-0.05)
    g = aggregate.goal(runs)
    assert g["ligo"] == "ligo" and [b["met"] for b in g["budgets"]] == [False, False]
    assert g["budgets"][0]["mean"] == pytest.approx(0.55) and not g["budgets"][0]["beats_all_seeds"]
    assert g["start_gap_max"] == 0.0 and g["start_ok"] and not g["met"]
    text = report.format_sweep(runs, base_steps=100)
    assert "| 1x (100) | LiGO | 0 (0.0%) | 55.0 ± 7.1 | 60.0 | 50.0 |" in text  # no operator phase in these fakes
    assert "| 1x (100) | stacking | - | 30.0 ± 0.0 (1/2 reached) | 30.0 | miss |" in text
    assert "**Overall: not met.**" in text


# ------------------------------------------------------------------------------------------ command line
def test_cli_writes_outputs(tmp_path, texts, one_thread, capsys):
    out = tmp_path / "out"
    argv = ["--preset", "toy", "--corpus", str(texts), "--out-dir", str(out), "--no-progress", "--threads", "1"]
    demo.main(argv + ["--seed", "5", "--methods", "stack,scratch", "--large-steps", "8"])
    printed = capsys.readouterr().out
    assert "'split': 5" in printed and "plot:" in printed and "| Scratch (no growth) |" in printed
    for suffix in ("png", "md", "json"):
        assert (out / f"growth_savings_toy.{suffix}").is_file()
    md = (out / "growth_savings_toy.md").read_text()
    assert "--seed 5" in md and "split=5" in md and "Stacking" in md and "LiGO (" not in md


def test_cli_default_output_is_an_untracked_run_directory(tmp_path, texts, one_thread, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["--preset", "toy", "--corpus", str(texts), "--no-progress", "--threads", "1", "--methods", "scratch"]
    demo.main(argv + ["--large-steps", "2", "--seeds", "3,4"])
    (run_dir,) = (tmp_path / "runs").iterdir()  # runs/ is gitignored
    assert run_dir.name.startswith("toy-")
    written = sorted(p.name for p in run_dir.iterdir())
    assert written == sorted(
        [f"growth_savings_toy_seed{s}.{x}" for s in (3, 4) for x in ("md", "png", "json")]
        + [f"growth_savings_toy_sweep.{x}" for x in ("md", "png", "json")]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "runs"]  # nothing else written
    sweep = json.loads((run_dir / "growth_savings_toy_sweep.json").read_text())
    assert [r["seed"] for r in sweep["runs"]] == [3, 4] and all(r["summary"] for r in sweep["runs"])
    sweep_md = (run_dir / "growth_savings_toy_sweep.md").read_text()
    assert "seeds 3, 4" in sweep_md
    # the runs' JSON files sum up to the same tables without training (runs of several processes)
    jsons = sorted(map(str, run_dir.glob("*_seed*.json")))
    again = demo.main(["--aggregate", *jsons, "--out-dir", str(tmp_path / "a")])
    assert [r.base_seed for r in again] == [3, 4]
    tables = (tmp_path / "a" / "growth_savings_toy_sweep.md").read_text()
    assert tables.split("## FLOPs saved")[1] == sweep_md.split("## FLOPs saved")[1]


def test_cli_rejects_bad_input(capsys):
    for argv, match in (
        (["--methods", "ligo,bogus"], "unknown method"),
        (["--budgets", "1,0"], "budgets"),
        (["--ligo-steps", "5", "--ligo-fraction", "0.1"], "not allowed with"),
        (["--ligo-fraction", "2"], "at most 1"),
        (["--seeds", "1,x"], "integers"),
    ):
        with pytest.raises(SystemExit) as e:
            demo.main(argv)
        assert e.value.code == 2 and match in capsys.readouterr().err


def test_axis_presets_run_the_baselines_on_their_axes(texts, one_thread):
    toy = presets.PRESETS["toy"]
    split = presets.axis_presets(toy)
    assert set(split) == {"toy-depth2", "toy-depth4", "toy-width"}
    d2, d4, w = split["toy-depth2"], split["toy-depth4"], split["toy-width"]
    assert (d2.large.layers, d4.large.layers, d2.large.hidden, d2.large.heads) == (2, 4, 16, 2)  # small: L1 d16 h2
    assert (w.large.layers, w.large.hidden, w.large.heads, w.large.ffn) == (1, 32, 4, 64)
    assert {"demo-depth2", "demo-depth4", "demo-width"} <= set(presets.PRESETS)
    with pytest.raises(ValueError, match="'hypercloning' grows width only"):  # refused before any training
        run.run_experiment(d2, corpus=texts, methods=["hypercloning"], progress=False)

    res = run.run_experiment(d2, corpus=texts, methods=["gstack", "llama_pro"], progress=False)
    assert list(res.methods) == ["gstack", "llama_pro", "scratch"]
    # LLaMA-Pro's added block is the identity: the grown model is the small one; G_stack's second copy is not
    assert res.methods["llama_pro"].notes["val_loss_grown"] == pytest.approx(res.small_loss, abs=1e-4)
    assert abs(res.methods["gstack"].notes["val_loss_grown"] - res.small_loss) > 1e-3
    assert res.tokens_per_param == d2.large_steps * d2.batch_size * d2.seq_len / res.large_params
    for r in res.summary():
        assert res.methods[r["method"]].setup_flops == 0.0
        if r["flops"]:  # G_stack's speedup and the % saved describe the same ratio
            assert r["speedup"] == pytest.approx(1 / (1 - r["flops_saved"]) - 1)
        elif r["flops"] == 0:  # at the target before any training
            assert r["speedup"] == math.inf

    res_w = run.run_experiment(w, corpus=texts, methods=["hypercloning", "ligo_lossless"], progress=False)
    assert res_w.methods["hypercloning"].notes["val_loss_grown"] == pytest.approx(res_w.small_loss, rel=0.01)
    assert res_w.methods["ligo_lossless"].notes["operator_step_flops"] == res_w.flops["operator_step"] > 0

    # the per-axis table: both metrics, wall time and tokens per parameter, read back from the JSON too
    back = results.Result.from_json(json.loads(json.dumps(res_w.to_json())))
    rows = axes.axis_rows([res, back], base_steps=toy.large_steps)
    assert [(r["axis"], r["method"]) for r in rows] == [
        ("depth 2x", "gstack"), ("depth 2x", "llama_pro"), ("depth 2x", "scratch"),
        ("width 2x", "ligo_lossless"), ("width 2x", "hypercloning"), ("width 2x", "scratch"),
    ]  # fmt: skip
    hc = next(r for r in res_w.summary() if r["method"] == "hypercloning")
    row = rows[4]
    assert (row["saved"], row["speedup"], row["per_seed"]) == (hc["flops_saved"], hc["speedup"], {0: hc["flops_saved"]})
    assert row["tokens_per_param"] == res_w.tokens_per_param and row["budget"] == 1
    table = axes.format_axis_table([res, back], base_steps=toy.large_steps)
    assert axes.axis_of(toy) == "depth 2x + width 2x"
    assert "| speedup (mean) |" in table and "| HyperCloning |" in table and f"| {res.tokens_per_param:.2f} |" in table


def test_pretrained_regime_small_model_is_hard_to_beat_and_the_defaults_keep_it(texts, one_thread):
    """The pretrained regime (issue 19): the small model sees >= 20 tokens per parameter; grow()'s function-preserving
    start begins at its loss, and the operator trains at the continued-training lr (ligo_fast.budget)."""
    preset = presets.PRESETS["pretrained-toy"]
    res = run.run_experiment(preset, corpus=texts, methods=["ligo_lossless"], progress=False)
    assert preset.small_tokens / res.small_params >= 20
    assert presets.PRESETS["pretrained"].small_tokens / 134_464 > 60  # the demo small model's parameters
    assert res.small_loss < res.small_curve[0].val_loss - 1.0  # it learned: far below its random start
    notes = res.methods["ligo_lossless"].notes
    assert notes["val_loss_grown"] == pytest.approx(res.small_loss, rel=0.01)  # lossless_noisy: within 1%
    assert notes["operator_lr"] == pytest.approx(preset.lr / math.sqrt(preset.small.hidden))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_the_large_config_comes_from_ligo_fast_large_config_and_is_the_presets_shape(name, family):
    """The demo builds its large config as users do (ligo_fast.large_config of the small one, issue 19 item 4); it
    is the preset's large shape, field for field."""
    p = presets.PRESETS[name]
    grown = models.grown_config(models.make_config(p.small, p.seq_len, family), p.large)
    assert grown.to_dict() == models.make_config(p.large, p.seq_len, family).to_dict()
