"""The growth-savings experiment (ligo_fast.apps.savings): FLOP accounting by hand, the corpus split, and a
toy end-to-end run of all three methods (outputs written into tmp_path), also through its command line."""

from __future__ import annotations

import logging
import random
import shutil

import pytest
import torch
from torch import nn
from transformers import GPT2Config, LlamaConfig

from ligo_fast.apps import data, demo
from ligo_fast.apps.savings import corpus, flops, models, presets, report, results, run
from ligo_fast.apps.savings.train import EvalPoint


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
    assert flops.operator_step_flops(cfg, 3, 4, 280) == 96768 + 3 * 280


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


def test_toy_experiment_end_to_end(tmp_path, one_thread, caplog):
    family = "llama"
    texts = tmp_path / "corpus"
    texts.mkdir()
    for i, src in enumerate(corpus.stdlib_files()[:12]):
        shutil.copy(src, texts / f"f{i}.py")
    preset = presets.PRESETS["toy"]
    events = []
    with caplog.at_level(logging.INFO, logger=run.__name__):  # stderr is no terminal here: log lines, no bar
        res = run.run_experiment(preset, corpus=texts, on_event=lambda n, d: events.append(n))
    assert res.family == family
    # progress: one line per evaluation (not per step), each naming the phase, the overall step and the loss
    lines = [m for m in caplog.messages if ": val " in m]
    evals = len(res.small_curve) + sum(len(m.curve) for m in res.methods.values())
    total = preset.small_steps + 3 * preset.large_steps + preset.ligo_steps
    assert len(lines) == evals < total
    assert lines[0] == f"small pretrain 0/{total}: val {res.small_curve[0].val_loss:.3f}"
    assert lines[-1] == f"scratch {total}/{total}: val {res.methods['scratch'].final_loss:.3f}"
    assert set(res.methods) == {"ligo", "stack", "scratch"}
    fl = res.flops
    assert fl["operator_step"] == fl["large_step"] + 3 * fl["production_forward"] > fl["large_step"]
    assert fl["small_step"] == flops.train_step_flops(models.make_config(preset.small, preset.seq_len, family), 4, 32)
    assert res.small_flops == preset.small_steps * fl["small_step"]

    ligo = res.methods["ligo"]
    assert ligo.setup_flops == preset.ligo_steps * fl["operator_step"]
    first_train = next(p for p in ligo.curve if p.phase == "train")
    assert first_train.flops == ligo.setup_flops and first_train.step == 0
    assert ligo.curve[-1].flops == ligo.setup_flops + preset.large_steps * fl["large_step"]
    assert res.methods["stack"].setup_flops == 0.0
    for m in res.methods.values():  # the same token budget for every method
        assert m.curve[-1].tokens == preset.large_steps * preset.batch_size * preset.seq_len
    assert res.methods["scratch"].curve[-1].flops == preset.large_steps * fl["large_step"]
    for key in ("small", "grown_before_operator", "after_operator_materialized"):
        assert key in res.ligo_trace
    # materialising does not change the function: the last operator eval == the first training eval
    last_op = [p for p in ligo.curve if p.phase == "operator"][-1]
    assert last_op.val_loss == pytest.approx(first_train.val_loss, abs=1e-4)
    assert {"small_done", "ligo_grown", "ligo_materialized", "method_done"} <= set(events)

    rows = {r["method"]: r for r in res.summary()}
    scratch = rows["scratch"]
    assert scratch["flops"] is not None and scratch["flops_saved"] == pytest.approx(0.0)
    assert scratch["flops"] <= preset.large_steps * fl["large_step"]
    for r in rows.values():
        if r["flops"] is not None and r["method"] != "scratch":
            assert r["flops_with_small"] == pytest.approx(r["flops"] + res.small_flops)
            assert r["flops_saved"] == pytest.approx(1 - r["flops"] / scratch["flops"])

    md = report.write_table(res, tmp_path / "out" / "table.md", command="pytest toy")
    png = report.plot(res, tmp_path / "out" / "plot.png")
    js = report.write_json(res, tmp_path / "out" / "data.json")
    text = md.read_text()
    assert "pytest toy" in text and "seeds: split=0" in text and "Scratch (no growth)" in text
    assert "Verdict" in text and "LiGO trace" in text and "train steps to target" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert js.stat().st_size > 0


def test_cli_writes_outputs(tmp_path, one_thread, capsys):
    texts = tmp_path / "corpus"
    texts.mkdir()
    for i, src in enumerate(corpus.stdlib_files()[:6]):
        shutil.copy(src, texts / f"f{i}.py")
    out = tmp_path / "out"
    argv = ["--preset", "toy", "--corpus", str(texts), "--out-dir", str(out), "--no-progress", "--threads", "1"]
    demo.main(argv + ["--seed", "5", "--methods", "stack,scratch", "--large-steps", "8"])
    printed = capsys.readouterr().out
    assert "'split': 5" in printed and "plot:" in printed and "| Scratch (no growth) |" in printed
    for suffix in ("png", "md", "json"):
        assert (out / f"growth_savings_toy.{suffix}").is_file()
    md = (out / "growth_savings_toy.md").read_text()
    assert "--seed 5" in md and "split=5" in md and "Stacking" in md and "LiGO (operator" not in md
