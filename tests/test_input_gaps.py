"""Issue 22's gaps in the input checks: operator files, --data, unreadable inputs, from_pretrained's class, a
load_operator given another small model. Oracles: the files as written, the exit codes of ligo_fast.apps.errors."""

from __future__ import annotations

import builtins
import json
import logging

import pytest
import torch
from _models import build, configs
from safetensors import safe_open
from safetensors.torch import save_file

import ligo_fast
from ligo_fast import serialization
from ligo_fast.apps import data, errors, inputs
from ligo_fast.integrations import from_pretrained

NAME = "BertForMaskedLM"


@pytest.fixture(scope="module")
def grown():
    small_cfg, large_cfg = configs(NAME)
    small = build(NAME, small_cfg)
    return small, ligo_fast.grow(small, large_cfg, seed=0, width_init="rand", depth_init="rand")


def _rewrite(p, keep_tag: bool, change=lambda sd: sd) -> None:
    """Rewrite the safetensors file ``p`` without its digest (and without its format tag unless ``keep_tag``)."""
    with safe_open(str(p), "pt") as f:
        meta = f.metadata()
        sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta.pop("sha256")
    if not keep_tag:
        meta.pop("format")
    save_file(change(sd), str(p), metadata=meta)


@pytest.mark.parametrize("keep_tag", [True, False])
def test_a_format_2_file_without_its_digest_is_refused(grown, tmp_path, keep_tag):
    """The digest entry removed and a value changed: it loaded, since the digest was checked only when present."""
    small, model = grown
    model.save_operator(tmp_path)

    def flip(sd):
        k = next(k for k in sd if "coeffs" in k)
        sd[k] = sd[k].clone()
        sd[k].view(-1)[0] += 1.0
        return sd

    _rewrite(tmp_path / serialization.WEIGHTS, keep_tag, flip)
    with pytest.raises(ValueError, match="format-2 operator file without its digest"):
        ligo_fast.load_operator(tmp_path, small)


def test_integer_operator_tensors_are_refused(grown, tmp_path):
    small, model = grown
    state = {k: (v * 1000).long() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    serialization.write_operator(tmp_path, state, model.operator_meta())  # a valid file (digest and all)
    with pytest.raises(ValueError, match=r"operator tensor .* is torch.int64, expected floating point"):
        ligo_fast.load_operator(tmp_path, small)


def test_another_small_model_warns_and_the_files_copy_is_used(grown, tmp_path, caplog):
    small, model = grown
    model.save_operator(tmp_path)
    other = build(NAME, configs(NAME)[0], seed=7)  # same architecture, other weights
    with caplog.at_level(logging.WARNING, logger="ligo_fast.checkpoint"):
        loaded = ligo_fast.load_operator(tmp_path, other)
    assert "differs from the given BertForMaskedLM's" in caplog.text and "using the operator's copy" in caplog.text
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ligo_fast.checkpoint"):
        ligo_fast.load_operator(tmp_path, small)  # the operator's own small model: no warning
    assert "differs" not in caplog.text


@pytest.mark.parametrize("name", ["logging", "NoSuchModel", 5, "AutoConfig"])
def test_from_pretrained_refuses_a_bad_small_class(grown, tmp_path, name):
    _, model = grown
    model.save_operator(tmp_path)
    meta = json.loads((tmp_path / serialization.META).read_text())
    (tmp_path / serialization.META).write_text(json.dumps({**meta, "small_class": name}))
    with pytest.raises(ValueError, match=f"transformers has no model class {name!r}"):
        from_pretrained(tmp_path, "some/small")


def test_a_text_prefix_does_not_hide_a_binary(tmp_path):
    elf = b"\x7fELF\x02\x01\x01" + bytes(9) + bytes(range(256)) * 64
    f = tmp_path / "notes.txt"
    f.write_bytes(b"An innocent line of text.\n" * 50_000 + elf)  # 1.3 MB of text first
    assert data.text_problem(f) == f"a NUL byte at offset {26 * 50_000 + 7}"
    with pytest.raises(errors.UserError, match="not a text file"):
        inputs.text_files([str(f)])
    ok = tmp_path / "ok.txt"
    ok.write_bytes(b"An innocent line of text.\n" * 50_000)
    assert data.text_problem(ok) is None


def _unreadable(monkeypatch, name: str) -> None:
    """Opening files named ``name`` fails as for another user's file (the tests may run as root)."""
    real = builtins.open

    def guarded(file, *a, **k):
        if str(file).endswith(name):
            raise PermissionError(13, "Permission denied", str(file))
        return real(file, *a, **k)

    monkeypatch.setattr(builtins, "open", guarded)


def test_unreadable_data_is_a_user_error(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("text")
    _unreadable(monkeypatch, "a.txt")
    with pytest.raises(errors.UserError, match="Permission denied") as e:
        inputs.text_files([str(tmp_path / "a.txt")])
    assert e.value.exit_code == errors.EXIT_USAGE == 2


def test_unreadable_weights_say_permission_denied(grown, tmp_path, monkeypatch):
    small, _ = grown
    small.save_pretrained(tmp_path)
    _unreadable(monkeypatch, "model.safetensors")
    with pytest.raises(errors.UserError, match=r"cannot read model.safetensors \(.*Permission denied"):
        inputs.load_small(str(tmp_path))


def test_unreadable_data_found_late_is_a_data_error(tmp_path, monkeypatch):
    """A file that became unreadable between the checks and the encoding (or a directory that cannot be listed)."""
    (tmp_path / "a.txt").write_text("text")
    monkeypatch.setattr(
        torch, "from_file", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
    )
    with pytest.raises(data.DataError, match=r"a.txt: cannot read it \(Permission denied\)"):
        data.encode_files([tmp_path / "a.txt"])
    monkeypatch.undo()

    def unlistable(self, pattern):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(tmp_path), "rglob", unlistable)
    with pytest.raises(errors.UserError, match="cannot read it .*Permission denied") as e:
        inputs.text_files([str(tmp_path)])
    assert e.value.exit_code == errors.EXIT_USAGE
