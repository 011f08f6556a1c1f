"""The ``ligo-fast`` command line (``ligo_fast.apps.cli``) and its training run (``ligo_fast.apps.training``), end to
end on tiny models saved into temporary directories (in-process)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import pytest
import torch
import transformers as T
from safetensors.torch import load_file

import ligo_fast
from ligo_fast.apps import cli, errors, training
from ligo_fast.integrations import from_pretrained

VOCAB = 260  # byte-level tokens need 256 ids; the masked LM's mask id is vocab_size - 1
SMALL = {
    "LlamaForCausalLM": T.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    ),
    "BertForMaskedLM": T.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
    ),
}
# partial large configs: the rest comes from the small config (Llama's head_dim is derived again: 48 / 4)
LARGE = {"hidden_size": 48, "intermediate_size": 72, "num_hidden_layers": 3}
GROW = [
    "--steps",
    "6",
    "--batch-size",
    "2",
    "--seq-len",
    "16",
    "--save-every",
    "2",
    "--log-every",
    "3",
    "--no-progress",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small model dirs, the large config JSON and a text corpus."""
    d = tmp_path_factory.mktemp("cli")
    for name, cfg in SMALL.items():
        torch.manual_seed(0)
        getattr(T, name)(cfg).save_pretrained(d / name)
    T.BertModel(SMALL["BertForMaskedLM"]).save_pretrained(d / "BertModel")  # supported, but no LM head
    (d / "large.json").write_text(json.dumps(LARGE))
    (d / "corpus").mkdir()
    (d / "corpus" / "a.txt").write_text("The quick brown fox jumps over the lazy dog. " * 20)
    (d / "corpus" / "b.txt").write_text("def grow(small, large):\n    return operator(small)\n" * 10)
    _word_tokenizer(d / "corpus").save_pretrained(d / "BertForMaskedLM")  # the masked LM comes with a tokenizer
    return d


def _word_tokenizer(corpus):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for f in corpus.iterdir() for w in f.read_text().split()})
    vocab = {w: i for i, w in enumerate(["[UNK]", "[SEP]", "[MASK]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", mask_token="[MASK]")


def _grow(files, name: str, out, *extra) -> list[str]:
    return [
        "grow",
        "--small",
        str(files / name),
        "--large-config",
        str(files / "large.json"),
        "--data",
        str(files / "corpus"),
        "--out",
        str(out),
        *GROW,
        *extra,
    ]


def _operator(out) -> dict[str, torch.Tensor]:
    return load_file(str(out / "operator.safetensors"))


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


@pytest.fixture(scope="module")
def grown(files, tmp_path_factory):
    """An uninterrupted 6-step run of the causal LM: the reference for the resume tests."""
    out = tmp_path_factory.mktemp("grown")
    assert cli.main(_grow(files, "LlamaForCausalLM", out)) == 0
    return out


def test_grow_writes_operator_and_model(files, grown, capsys):
    small = T.LlamaForCausalLM.from_pretrained(files / "LlamaForCausalLM")
    op = ligo_fast.load_operator(grown, small).eval()
    large = T.AutoModelForCausalLM.from_pretrained(grown).eval()
    assert isinstance(large, T.LlamaForCausalLM)
    assert (large.config.hidden_size, large.config.num_hidden_layers, large.config.head_dim) == (48, 3, 12)
    assert large.config.vocab_size == VOCAB  # inherited from the small config
    assert (grown / "model.safetensors").is_file() and (grown / "ligo_config.json").is_file()
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(large(input_ids=ids).logits, op(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    # the README's recipe: the operator back from the output directory and the small model's directory
    again = from_pretrained(grown, str(files / "LlamaForCausalLM")).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, op(input_ids=ids).logits, atol=0, rtol=0)
    # the operator moved away from its initialisation
    init = ligo_fast.grow(small, large.config, seed=0)
    assert any(not torch.equal(v, init.state_dict()[k]) for k, v in op.state_dict().items())


def test_grow_depth_only_writes_the_start_without_operator_steps(files, tmp_path, capsys):
    """Without --steps, a depth-only growth from the default function-preserving start trains no operator
    (ligo_fast.budget's rule): the written model is the start, materialised, and computes the small model's function;
    an explicit --steps still trains."""
    (tmp_path / "deeper.json").write_text(json.dumps({"num_hidden_layers": 3}))
    args = _grow(files, "LlamaForCausalLM", tmp_path / "out", "--large-config", str(tmp_path / "deeper.json"))
    i = args.index("--steps")
    del args[i : i + 2]
    assert cli.main(args) == 0
    assert "0 operator steps" in capsys.readouterr().out
    small = T.LlamaForCausalLM.from_pretrained(files / "LlamaForCausalLM").eval()
    large = T.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert (large.config.hidden_size, large.config.num_hidden_layers) == (32, 3)
    start = ligo_fast.grow(small, large.config, seed=0).materialize().eval()
    _same(large.state_dict(), start.state_dict())
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(large(input_ids=ids).logits, small(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    assert cli.main([*args[:-4], "--out", str(tmp_path / "trained"), "--steps", "2", *args[-4:]]) == 0
    trained = T.AutoModelForCausalLM.from_pretrained(tmp_path / "trained")
    assert any(not torch.equal(v, start.state_dict()[k]) for k, v in trained.state_dict().items())


def test_grow_masked_lm(files, tmp_path, capsys):
    out = tmp_path / "bert"
    assert cli.main(_grow(files, "BertForMaskedLM", out, "--steps", "3", "--no-tie", "--residual")) == 0
    text = capsys.readouterr().out
    assert "masked LM loss" in text and "step 3/3  loss" in text and "done: 3 steps" in text
    assert " tokens from 2 file(s)" in text  # the small model's tokenizer, not bytes
    assert T.AutoTokenizer.from_pretrained(out).mask_token == "[MASK]"  # copied next to the grown model
    large = T.AutoModelForMaskedLM.from_pretrained(out)
    assert isinstance(large, T.BertForMaskedLM) and large.config.hidden_size == 48
    assert json.loads((out / "ligo_config.json").read_text())["ligo_config"]["residual"] is True


def test_resume_after_stop_matches_uninterrupted(files, grown, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_grow(files, "LlamaForCausalLM", out, "--max-steps-this-run", "3")) == 0
    assert "stopped after step 3 of 6" in capsys.readouterr().out
    assert (out / "checkpoint" / "latest").read_text() == "step-00000003"
    assert not (out / "model.safetensors").exists()
    assert cli.main(_grow(files, "LlamaForCausalLM", out)) == 0
    text = capsys.readouterr().out
    assert "resuming from step 3 of 6" in text and "step 3/6" not in text and "step 6/6" in text
    _same(_operator(out), _operator(grown))
    _same(load_file(str(out / "model.safetensors")), load_file(str(grown / "model.safetensors")))
    # a finished run: its checkpoint is gone, its outputs are complete: nothing to do
    assert not (out / "checkpoint").exists()
    assert cli.main(_grow(files, "LlamaForCausalLM", out)) == 0
    assert "already holds the outputs of this run (6 steps); nothing to do" in capsys.readouterr().out


def _on_call(monkeypatch, name: str, at: int, action) -> None:
    """Patch ``training.<name>`` so that its ``at``-th call in this run runs ``action`` (before the call for
    ``update``, after it for ``forward_backward``)."""
    original, calls = getattr(training, name), []

    def patched(*args):
        calls.append(None)
        if name == "update" and len(calls) == at:
            action()
        result = original(*args)
        if name == "forward_backward" and len(calls) == at:
            action()
        return result

    monkeypatch.setattr(training, name, patched)


def _raise_interrupt() -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("how", ["signal", "raise"])
def test_ctrl_c_saves_and_resumes(files, grown, tmp_path, capsys, monkeypatch, how):
    """Ctrl-C: ``signal`` (SIGINT as from a terminal) finishes the step, then saves it; ``raise`` (a
    KeyboardInterrupt inside step 4, after its backward, before its update) saves step 3. Both exit 130; the
    resumed run ends with the uninterrupted run's operator."""
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        action = (lambda: os.kill(os.getpid(), signal.SIGINT)) if how == "signal" else _raise_interrupt
        _on_call(m, "forward_backward", 4, action)
        assert cli.main(_grow(files, "LlamaForCausalLM", out)) == errors.EXIT_INTERRUPTED
    saved = 4 if how == "signal" else 3
    assert f"interrupted after step {saved} of 6" in capsys.readouterr().err
    assert (out / "checkpoint" / "latest").read_text() == f"step-{saved:08d}"
    assert cli.main(_grow(files, "LlamaForCausalLM", out)) == 0
    assert f"resuming from step {saved} of 6" in capsys.readouterr().out
    _same(_operator(out), _operator(grown))


def test_ctrl_c_during_update_keeps_the_last_checkpoint(files, grown, tmp_path, capsys, monkeypatch):
    """A KeyboardInterrupt inside the optimizer update of step 5 (the update may be half applied): nothing is saved,
    the periodic checkpoint of step 4 stays, exit 130; the resumed run redoes step 5 and ends as the uninterrupted."""
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _on_call(m, "update", 5, _raise_interrupt)
        assert cli.main(_grow(files, "LlamaForCausalLM", out)) == errors.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "interrupted during the update of step 5" in err and "step-00000004 is kept" in err
    assert (out / "checkpoint" / "latest").read_text() == "step-00000004"
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == ["latest", "step-00000002", "step-00000004"]
    assert cli.main(_grow(files, "LlamaForCausalLM", out)) == 0
    assert "resuming from step 4 of 6" in capsys.readouterr().out
    _same(_operator(out), _operator(grown))


def test_resume_refuses_another_runs_checkpoint(files, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_grow(files, "LlamaForCausalLM", out, "--lr", "0.001", "--max-steps-this-run", "2")) == 0
    capsys.readouterr()
    assert cli.main(_grow(files, "LlamaForCausalLM", out, "--lr", "0.002")) == errors.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds a checkpoint of another run (lr: 0.001 there, 0.002 now)" in err
    assert (out / "checkpoint" / "latest").read_text() == "step-00000002"  # left as it was


def test_progress_off_a_terminal_is_one_line_per_log_interval(files, tmp_path, capsys):
    """Without --no-progress but with stderr not a terminal (captured): no bar, no line per step; the loss line
    every --log-every steps only."""
    argv = [a for a in _grow(files, "LlamaForCausalLM", tmp_path / "run") if a != "--no-progress"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    steps = [line[:15] for line in out.splitlines() if line.startswith("step ")]
    assert steps == ["step 3/6  loss ", "step 6/6  loss "]
    assert "\r" not in out + err and "operator" not in err and "it/s" not in err and "step/s" not in err, err


def test_progress_bar_only_on_a_terminal(monkeypatch, caplog):
    from ligo_fast.apps.progress import Progress

    class Terminal:
        def isatty(self) -> bool:
            return True

        def write(self, s: str) -> int:
            return len(s)

        def flush(self) -> None:
            pass

    with Progress(10, "x", log=logging.getLogger("t")) as p:  # stderr captured: not a terminal
        assert p.bar is None
        p.update(5)
        with caplog.at_level(logging.INFO, logger="t"):
            p.note(val="1.0")
        assert caplog.messages == ["x 5/10: val 1.0"]
    monkeypatch.setattr(sys, "stderr", Terminal())
    with Progress(10, "x") as p:
        assert p.bar is not None
        p.update(3)
        assert p.bar.n == 3
    with Progress(10, "x", enabled=False) as p:
        assert p.bar is None


def test_materialize_reproduces_grown(files, grown, tmp_path, capsys):
    out = tmp_path / "hf"
    argv = [
        "materialize",
        "--small",
        str(files / "LlamaForCausalLM"),
        "--operator",
        str(grown),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert cli.main(argv) == 0
    assert "wrote LlamaForCausalLM" in capsys.readouterr().out
    _same(load_file(str(out / "model.safetensors")), load_file(str(grown / "model.safetensors")))


def test_materialize_sharded(files, grown, tmp_path, capsys):
    out = tmp_path / "hf"
    base = ["materialize", "--small", str(files / "LlamaForCausalLM"), "--operator", str(grown), "--out", str(out)]
    assert cli.main([*base, "--max-shard-size", "4 parsecs"]) == 2
    assert "--max-shard-size" in capsys.readouterr().err and not out.exists()
    assert cli.main([*base, "--max-shard-size", "20KiB", "--device", "cpu"]) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (out / "model.safetensors").exists()
    manifest = json.loads((out / "ligo_fast_outputs.json").read_text())
    assert set(shards) | {"model.safetensors.index.json", "config.json"} <= set(manifest["files"])
    merged = {k: v for f in shards for k, v in load_file(str(out / f)).items()}
    _same(merged, load_file(str(grown / "model.safetensors")))
    large = T.AutoModelForCausalLM.from_pretrained(out)
    _same(large.state_dict(), T.AutoModelForCausalLM.from_pretrained(grown).state_dict())


def test_info(capsys):
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    assert f"torch {torch.__version__}" in text
    for backend in ("torch", "triton", "cpp"):
        assert backend in text
    assert "available" in text


def test_bench_quick(capsys):
    assert cli.main(["bench", "--quick", "--device", "cpu", "--min-time", "0.01"]) == 0
    text = capsys.readouterr().out
    assert "ligo_expand" in text and "ffn in" in text and "block weights" in text


def test_large_config_inherits_and_derives():
    small = SMALL["LlamaForCausalLM"]
    kept = ligo_fast.config.inherited_fields(small, LARGE)
    assert "head_dim" not in kept and kept["vocab_size"] == VOCAB and kept["num_key_value_heads"] == 2


def test_large_config_grows_the_layer_kinds():
    # Gemma 3's sliding-window/full layers: each large layer takes the kind of the small layer it grows from
    small = T.Gemma3TextConfig(num_hidden_layers=4, layer_types=["sliding_attention"] * 3 + ["full_attention"])
    grown = ligo_fast.large_config(small, num_hidden_layers=6)
    assert grown.layer_types == ["sliding_attention"] * 5 + ["full_attention"]  # large layers 1, 4 are added
    given = ligo_fast.large_config(small, num_hidden_layers=6, layer_types=["full_attention"] * 6)
    assert given.layer_types == ["full_attention"] * 6


def _bad(files, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    unsupported = tmp_path / "unsupported"
    unsupported.mkdir()
    (unsupported / "config.json").write_text(json.dumps({"architectures": ["T5ForConditionalGeneration"]}))
    shrink = tmp_path / "shrink.json"
    shrink.write_text(json.dumps({"hidden_size": 16}))
    other = tmp_path / "bert.json"
    other.write_text(json.dumps({"model_type": "bert", "hidden_size": 48}))
    broken = tmp_path / "broken.json"
    broken.write_text("{hidden_size: 48")
    llama, large, corpus = str(files / "LlamaForCausalLM"), str(files / "large.json"), str(files / "corpus")
    out = str(tmp_path / "out")

    def grow(small=llama, cfg=large, data=corpus, *extra):
        return [
            "grow",
            "--small",
            small,
            "--large-config",
            cfg,
            "--data",
            data,
            "--out",
            out,
            "--steps",
            "1",
            "--seq-len",
            "16",
            *extra,
        ]

    return {
        "missing small dir": (grow(small=str(tmp_path / "nope")), "no such directory"),
        "no config.json": (grow(small=str(empty)), "no config.json"),
        "missing large config": (grow(cfg=str(tmp_path / "nope.json")), "no such file"),
        "broken large config": (grow(cfg=str(broken)), "not valid JSON"),
        "missing data": (grow(data=str(tmp_path / "nope.txt")), "no such file or directory"),
        "no data files": (grow(data=str(empty)), "no files found"),
        "unsupported class": (grow(small=str(unsupported)), "unsupported model class T5ForConditionalGeneration"),
        "config shrinks": (grow(cfg=str(shrink)), "cannot grow LlamaForCausalLM into the large config"),
        "another family": (grow(cfg=str(other)), "cannot grow LlamaForCausalLM into the large config"),
        "sequence too long": (grow(llama, large, corpus, "--seq-len", "999"), "exceeds the large model's 64"),
        "not a text model": (grow(small=str(files / "BertModel")), "needs a causal or masked LM"),
        "missing operator": (
            ["materialize", "--small", llama, "--operator", str(tmp_path / "nope"), "--out", out],
            "--operator",
        ),
        "bad device": (grow(llama, large, corpus, "--device", "gpu7"), "--device gpu7"),
    }


BAD = [
    "missing small dir",
    "no config.json",
    "missing large config",
    "broken large config",
    "missing data",
    "no data files",
    "unsupported class",
    "config shrinks",
    "another family",
    "sequence too long",
    "not a text model",
    "missing operator",
    "bad device",
]


@pytest.mark.parametrize("case", BAD)
def test_user_errors_are_one_line(files, tmp_path, capsys, case):
    argv, expected = _bad(files, tmp_path)[case]
    assert cli.main(argv) == errors.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ligo-fast ") and expected in err, err
    assert "Traceback" not in err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["grow", "--steps", "3"])
    assert e.value.code == 2 and "required" in capsys.readouterr().err


def test_console_process_has_no_traceback(tmp_path):
    """As a process (``python -m ligo_fast.apps.cli``): exit code 2 and one line on stderr."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "ligo_fast.apps.cli",
            "grow",
            "--small",
            str(tmp_path / "nope"),
            "--large-config",
            "x.json",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_init_defaults_are_grows():
    """The command line grows with grow()'s defaults (cli.py holds them as literals so --help imports no torch)."""
    assert {"depth_init": cli.DEPTH_DEFAULT, "width_init": cli.WIDTH_DEFAULT} == ligo_fast.config.GROW_INITS
    assert ligo_fast.LiGOConfig.grow_defaults().width_init == "lossless"
    assert ligo_fast.LiGOConfig() == ligo_fast.LiGOConfig.grow_defaults()  # grow()'s defaults are the dataclass's
    official = ligo_fast.LiGOConfig.official()
    assert (official.depth_init, official.width_init) == ("stackbert_noisy", "rand")
