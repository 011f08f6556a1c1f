"""Operator files and option checks through the library API: ``LiGOConfig.from_dict`` (types, unknown keys),
``unknown_config_keys``/``check_model_config`` (HF configs), ``save_operator``/``load_operator`` (each tensor once,
a digest, format versions, every field checked), crash-safe writes and the full-disk error, the lazy package."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest
import torch
import transformers as T
from safetensors.torch import load_file, save_file

import ligo_fast
from ligo_fast import serialization
from ligo_fast.config import LiGOConfig, check_model_config, unknown_config_keys

BERT = T.BertConfig(vocab_size=97, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2)


@pytest.fixture(scope="module")
def grown():
    torch.manual_seed(0)
    small = T.BertForMaskedLM(BERT).eval()  # a tied embedding / decoder
    large = T.BertConfig(**{**BERT.to_dict(), "hidden_size": 24, "num_hidden_layers": 3, "intermediate_size": 40})
    return small, ligo_fast.grow(small, large, seed=1).eval()


# ---------------------------------------------------------------------------------------------- LiGOConfig
@pytest.mark.parametrize(
    "given, expected",
    [
        ({"seed": "abc"}, "seed must be an integer"),
        ({"seed": True}, "seed must be an integer"),
        ({"tie": "false"}, "tie must be true or false"),
        ({"residual": 1}, "residual must be true or false"),
        ({"lean": "auto"}, "lean must be true, false or None"),
        ({"depth_noise": "0.1"}, "depth_noise must be a finite number"),
        ({"width_noise": float("nan")}, "width_noise must be a finite number"),
        ({"depth_init": ["rand"]}, "depth_init must be a scheme name"),
        ({"depth_init": "stack"}, "unknown depth_init 'stack'"),
        ({"tye": True}, "unknown LiGOConfig option 'tye' (did you mean 'tie'?)"),
        ({"zzz": 1}, "unknown LiGOConfig option 'zzz'; valid: depth_init"),
    ],
)
def test_ligo_config_from_dict_refuses_wrong_types_and_keys(given, expected):
    with pytest.raises(ValueError) as e:
        LiGOConfig.from_dict(given)
    assert expected in str(e.value)


def test_ligo_config_from_dict_round_trips_and_refuses_non_dicts():
    cfg = LiGOConfig(depth_init="stackbert", tie=False, seed=3, lean=None, depth_noise=0)
    assert LiGOConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="expected a dict"):
        LiGOConfig.from_dict([("tie", True)])
    with pytest.raises(ValueError, match="tie must be true or false"):
        ligo_fast.grow(T.BertForMaskedLM(BERT), BERT, tie="no")


# ---------------------------------------------------------------------------------------------- HF configs
def test_unknown_config_keys_names_the_misspelt_field():
    assert unknown_config_keys(T.BertConfig(**{**BERT.to_dict(), "hiden_size": 768})) == [("hiden_size", "hidden_size")]
    assert unknown_config_keys(T.BertConfig(my_note="x")) == [("my_note", None)]
    for cfg in (BERT, T.LlamaConfig(), T.GPT2Config(), T.GPT2Config(hidden_size=64), T.ViTConfig()):
        assert unknown_config_keys(cfg) == [], type(cfg).__name__


def test_check_model_config_wants_positive_integer_sizes():
    check_model_config(BERT)
    for field, value in (("hidden_size", 0), ("num_hidden_layers", -2), ("vocab_size", 1.5)):
        cfg = T.BertConfig(**BERT.to_dict())
        object.__setattr__(cfg, field, value)  # past transformers' own validation, as a file could
        with pytest.raises(ValueError, match=f"{field} must be a positive integer"):
            check_model_config(cfg, "large")


# ---------------------------------------------------------------------------------------------- files
def test_each_tensor_is_stored_once_and_restored(grown, tmp_path):
    small, model = grown
    model.save_operator(tmp_path)
    state = model.state_dict()
    stored = load_file(str(tmp_path / serialization.WEIGHTS))  # safetensors' own loader: what is in the file
    dupes = [k for k in state if k not in stored]
    assert dupes and any("decoder" in k or "word_embeddings" in k for k in dupes)  # the tied embedding, once
    assert sum(v.numel() for v in stored.values()) < sum(v.numel() for v in state.values())
    back = serialization.read_tensors(tmp_path)
    assert back.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(back[k], v), k
    loaded = ligo_fast.load_operator(tmp_path, small).eval()
    ids = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)


def test_a_format_1_file_still_loads(grown, tmp_path):
    """Files of the previous format: every tensor stored, no aliases, no digest, ``"format": 1``."""
    small, model = grown
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(tmp_path / serialization.WEIGHTS), metadata={"format": "ligo_fast-operator-1"})
    (tmp_path / serialization.META).write_text(json.dumps({"format": 1, **model.operator_meta()}))
    loaded = ligo_fast.load_operator(tmp_path, small)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-10]), "truncated or damaged"),
        (lambda p: p.write_bytes(b""), "truncated or damaged"),
        (lambda p: _flip(p, p.stat().st_size - 3), "do not match the digest"),
        (lambda p: _retag(p, "ligo_fast-operator-7"), "operator format '7'"),
    ],
)
def test_damaged_files_are_refused(grown, tmp_path, damage, expected):
    small, model = grown
    model.save_operator(tmp_path)
    damage(tmp_path / serialization.WEIGHTS)
    with pytest.raises(ValueError, match=expected):
        ligo_fast.load_operator(tmp_path, small)


def _flip(p, at: int) -> None:
    b = bytearray(p.read_bytes())
    b[at] ^= 1
    p.write_bytes(bytes(b))


def _retag(p, tag: str) -> None:
    from safetensors import safe_open

    with safe_open(str(p), "pt") as f:
        meta = f.metadata()
        sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file(sd, str(p), metadata={**meta, "format": tag})


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda m: m.update(format=99), "format 99 is not one this ligo_fast reads"),
        (lambda m: m.update(format=True), "format True"),
        (lambda m: m.update(small_class="GPT2LMHeadModel"), "grows a GPT2LMHeadModel, not the given BertForMaskedLM"),
        (lambda m: m["ligo_config"].update(tie="false"), "tie must be true or false"),
        (lambda m: m["ligo_config"].update(seed=[1]), "seed must be an integer"),
        (lambda m: m.update(extra=1), "unknown field(s) ['extra']"),
        (lambda m: m.pop("ligo_config"), "no ligo_config field"),
        (lambda m: m.update(large_config=[]), "large_config must be a JSON object"),
        (lambda m: m["large_config"].update(model_type="gpt2"), "is a 'gpt2' config"),
        (lambda m: m["large_config"].update(hidden_size="24"), "expected int, got str"),
        (lambda m: m["large_config"].update(num_hidden_layers=0), "num_hidden_layers must be a positive integer"),
    ],
)
def test_every_field_of_ligo_config_json_is_checked(grown, tmp_path, edit, expected):
    small, model = grown
    model.save_operator(tmp_path)
    meta = json.loads((tmp_path / serialization.META).read_text())
    edit(meta)
    (tmp_path / serialization.META).write_text(json.dumps(meta))
    with pytest.raises(ValueError) as e:
        ligo_fast.load_operator(tmp_path, small)
    assert expected in str(e.value) and serialization.META in str(e.value)


def test_non_finite_operator_values_are_refused(grown, tmp_path):
    small, model = grown
    state = {k: v.clone() for k, v in model.state_dict().items()}
    k = next(k for k in state if "coeffs" in k)
    state[k].view(-1)[0] = float("inf")
    serialization.write_operator(tmp_path, state, model.operator_meta())  # a valid file holding an Inf
    with pytest.raises(ValueError, match=f"operator tensor {k} contains Inf"):
        ligo_fast.load_operator(tmp_path, small)


# ---------------------------------------------------------------------------------------------- crash-safe writes
def test_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "f.txt"
    serialization.atomic_write(p, lambda t: t.write_text("old"))

    def fails(t):
        t.write_text("half")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        serialization.atomic_write(p, fails)
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]


def test_a_full_disk_is_named_with_the_path_and_free_space(tmp_path, monkeypatch):
    p = tmp_path / "big.bin"

    def enospc(t):
        t.write_bytes(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(serialization.DiskFullError) as e:
        serialization.atomic_write(p, enospc, nbytes=5 << 20)
    msg = str(e.value)
    assert msg.startswith(f"no space left on device writing {p} (") and "free, 5.0 MiB needed)" in msg
    assert e.value.errno == errno.ENOSPC and os.listdir(tmp_path) == []
    # torch.save's message says nothing of the disk: the free space decides
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda d: real(d)._replace(free=1000))
    err = serialization.disk_full_error(RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos"), p)
    assert isinstance(err, serialization.DiskFullError) and "1000 B free" in str(err)
    monkeypatch.setattr(shutil, "disk_usage", lambda d: real(d)._replace(free=10 << 30))
    assert serialization.disk_full_error(RuntimeError("unrelated"), p, nbytes=100) is None


# ---------------------------------------------------------------------------------------------- the package
def test_import_ligo_fast_is_lazy():
    code = (
        "import sys, ligo_fast\n"
        "assert 'torch' not in sys.modules, 'import ligo_fast imported torch'\n"
        "assert callable(ligo_fast.grow) and 'torch' in sys.modules\n"
        "assert ligo_fast.ops.ligo_expand and ligo_fast.LiGOConfig().tie is True\n"
        "assert set(ligo_fast.__all__) <= set(dir(ligo_fast))\n"
        "try:\n    ligo_fast.nope\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit('no AttributeError')\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
