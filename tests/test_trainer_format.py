"""The format number of a ``GrowingModel``'s Trainer checkpoints (issue 22): written into every checkpoint's
``model.safetensors`` (``ligo_format``), checked when it is loaded and by ``latest_complete_checkpoint``; a newer
format is refused in one line (naming the file where one is known), a checkpoint without it (written before the
number) resumes as format 1. Tiny GPT-2 of ``test_trainer.py``."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_trainer import OP_LR, _args, _data, _equal, _small, _state

import ligo_fast
from ligo_fast.integrations import GrowingModel, GrowthCallback, latest_complete_checkpoint
from ligo_fast.integrations.trainer import FORMAT

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers import Trainer  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")


def _run(out, resume=None, seed=0):
    small, large_cfg = _small()
    model = GrowingModel(ligo_fast.grow(small, large_cfg, seed=seed))
    tr = Trainer(model=model, args=_args(out, max_steps=4, save_steps=2), train_dataset=_data(8))
    tr.add_callback(GrowthCallback(tr, operator_steps=3, operator_lr=OP_LR))
    tr.train(resume_from_checkpoint=resume)
    return model


def test_a_growing_model_checkpoint_carries_its_format_and_a_newer_one_is_refused(tmp_path):
    full = _run(tmp_path / "a")
    weights = tmp_path / "a" / "checkpoint-2" / "model.safetensors"
    sd = load_file(str(weights))
    assert FORMAT == 1 and int(sd["ligo_format"]) == 1 and not bool(sd["ligo_grown"])
    assert latest_complete_checkpoint(tmp_path / "a") == str(tmp_path / "a" / "checkpoint-4")

    save_file({**sd, "ligo_format": torch.tensor(2)}, str(weights), metadata={"format": "pt"})
    (tmp_path / "a" / "checkpoint-4" / "trainer_state.json").unlink()  # as if killed while saving step 4
    with pytest.raises(ValueError) as e:
        latest_complete_checkpoint(tmp_path / "a")
    msg = str(e.value)
    assert "\n" not in msg and str(weights) in msg and "format 2, written by a newer ligo_fast" in msg
    fresh = GrowingModel(ligo_fast.grow(*_small(), seed=1))
    before = _state(fresh)
    with pytest.raises(ValueError, match=r"^a GrowingModel state of format 2, written by a newer ligo_fast"):
        fresh.load_state_dict({**sd, "ligo_format": torch.tensor(2)})
    _equal(_state(fresh), before, "a refused state changed nothing")
    with pytest.raises(ValueError, match="ligo_format is not a format number"):
        fresh.load_state_dict({**sd, "ligo_format": torch.tensor(0.5)})

    # written before the format number: resumes (strictly) as format 1, to the uninterrupted run's end
    save_file({k: v for k, v in sd.items() if k != "ligo_format"}, str(weights), metadata={"format": "pt"})
    assert latest_complete_checkpoint(tmp_path / "a") == str(weights.parent)
    resumed = _run(tmp_path / "b", resume=str(weights.parent), seed=5)
    _equal(_state(resumed.model), _state(full.model), "resumed from a checkpoint without the format number")
    assert json.loads((tmp_path / "b" / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4
