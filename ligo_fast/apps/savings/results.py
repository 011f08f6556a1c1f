"""What the experiment measured: :class:`Result` (curves, costs, metadata), :func:`cost_to_reach` a target loss,
and :func:`run_metadata` (date, machine, versions).

Imports torch and transformers (versions, devices), :mod:`.presets` and :class:`.train.EvalPoint`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import transformers

from .presets import ModelSize, Preset, Seeds
from .train import EvalPoint


@dataclass
class MethodResult:
    """One large-model method: its curve (operator phase first for LiGO) and its fixed costs.

    ``notes``: ``val_loss_grown`` (growth methods: the grown model before any training), ``val_loss_after_operator``
    and ``operator_params`` (LiGO methods)."""

    method: str
    curve: list[EvalPoint]
    setup_flops: float = 0.0  # operator steps (LiGO); 0 otherwise
    setup_wall_s: float = 0.0  # operator steps + growth + materialisation
    notes: dict = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        return self.curve[-1].val_loss

    @property
    def train_curve(self) -> list[EvalPoint]:
        """The large model's training evaluations (step 0 first), without the operator phase."""
        return [pt for pt in self.curve if pt.phase == "train"]

    @property
    def operator_steps(self) -> int:
        """Operator steps run (0 for methods without an operator)."""
        return max((pt.step for pt in self.curve if pt.phase == "operator"), default=0)


@dataclass
class Result:
    """Everything ``run_experiment`` measured; ``summary()`` gives the table rows."""

    preset: Preset
    seeds: Seeds
    family: str
    device: str
    corpus: str
    small_params: int
    large_params: int
    small_curve: list[EvalPoint]
    small_flops: float
    small_wall_s: float
    methods: dict[str, MethodResult]
    flops: dict[str, float]  # per-step costs and per-token breakdowns
    operator_budget: dict = field(default_factory=dict)  # ligo_fast.budget.OperatorBudget as a dict
    schedules: dict = field(default_factory=dict)  # 'large' (scratch) and 'grown': schedule.Schedule as dicts
    total_wall_s: float = 0.0
    meta: dict = field(default_factory=dict)  # date, machine, torch threads, load average, versions

    @property
    def target(self) -> float:
        """The validation loss scratch reaches at the end of its budget."""
        return self.methods["scratch"].final_loss

    @property
    def tokens_per_param(self) -> float:
        """Training tokens of each large model per large-model parameter (the operator's steps not included)."""
        p = self.preset
        return p.large_steps * p.batch_size * p.seq_len / self.large_params

    @property
    def small_loss(self) -> float:
        """The small model's validation loss after pretraining."""
        return self.small_curve[-1].val_loss

    @property
    def base_seed(self) -> int:
        """The seed the run was started with (``Seeds.from_base``; the split seed)."""
        return self.seeds.split

    def summary(self) -> list[dict]:
        """One row per method: cost to reach :attr:`target` (None if never reached) and savings vs scratch, plus the
        operator steps, their share of scratch's FLOPs, the loss the large model's training starts from (step 0)
        and, for growth methods, the grown model's loss before any training."""
        rows = []
        target = self.target
        for name, m in self.methods.items():
            f = cost_to_reach(m.curve, target, "flops")
            w = cost_to_reach(m.curve, target, "wall_s")
            st = cost_to_reach(m.curve, target, "step")
            extra = name != "scratch"
            rows.append(
                {
                    "method": name,
                    "final_loss": m.final_loss,
                    "steps": st,
                    "flops": f,
                    "wall_s": w,
                    "flops_with_small": None if f is None else f + (self.small_flops if extra else 0.0),
                    "wall_with_small": None if w is None else w + (self.small_wall_s if extra else 0.0),
                    "setup_flops": m.setup_flops,
                    "operator_steps": m.operator_steps,
                    "val_loss_grown": m.notes.get("val_loss_grown"),
                    "val_loss_start": m.train_curve[0].val_loss,
                }
            )
        base = next(r for r in rows if r["method"] == "scratch")
        budget_flops = self.methods["scratch"].curve[-1].flops
        for r in rows:
            r["operator_share"] = r["setup_flops"] / budget_flops
            for k in ("flops", "wall_s", "flops_with_small", "wall_with_small"):
                r[k + "_saved"] = None if r[k] is None or not base[k] else 1.0 - r[k] / base[k]
            # G_stack's metric: scratch's FLOPs over the method's, minus 1
            # (infinite for a grown model already at the target when its training starts)
            r["speedup"] = (
                None
                if r["flops"] is None or not base["flops"]
                else base["flops"] / r["flops"] - 1.0
                if r["flops"]
                else math.inf
            )
        return rows

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["target"] = self.target
        d["summary"] = self.summary()
        return d

    @classmethod
    def from_json(cls, d: dict) -> Result:
        """The inverse of :meth:`to_json` (the derived ``target`` and ``summary`` are recomputed, not read)."""
        pre = dict(d["preset"])
        pre["small"], pre["large"] = ModelSize(**pre["small"]), ModelSize(**pre["large"])
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in fields}
        kw["preset"] = Preset(**pre)
        kw["seeds"] = Seeds(**d["seeds"])
        kw["small_curve"] = [EvalPoint(**pt) for pt in d["small_curve"]]
        kw["methods"] = {
            name: MethodResult(**{**m, "curve": [EvalPoint(**pt) for pt in m["curve"]]})
            for name, m in d["methods"].items()
        }
        return cls(**kw)

    @classmethod
    def read(cls, path: str | os.PathLike) -> Result:
        """A run's JSON file (as the demo writes it) read back: :meth:`from_json` of its contents."""
        with open(path) as f:
            return cls.from_json(json.load(f))


def cost_to_reach(curve: Sequence[EvalPoint], target: float, key: str = "flops") -> float | None:
    """``key`` (``flops``, ``wall_s`` or ``step``) at which the curve first reaches ``val_loss <= target``, linearly
    interpolated between the two evaluations around the crossing; None if it never does.

    Only ``train``-phase points count: a LiGO run pays for all its operator steps before its first training
    point, even if the produced model were already below the target during operator training."""
    prev = None
    for p in (pt for pt in curve if pt.phase == "train"):
        if p.val_loss <= target:
            if prev is None or prev.val_loss == p.val_loss:
                return float(getattr(p, key))
            frac = (prev.val_loss - target) / (prev.val_loss - p.val_loss)
            return float(getattr(prev, key) + frac * (getattr(p, key) - getattr(prev, key)))
        prev = p
    return None


def run_metadata(device: str) -> dict:
    """Date, machine, torch threads, 1-minute load average at the start, library versions."""
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine_description(device),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": load,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def machine_description(device: str) -> str:
    """``N-core CPU, no GPU`` or the GPU's name."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))} GPU, {os.cpu_count()}-core CPU"
    gpu = "GPU present but unused" if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core CPU, {gpu} ({torch.get_num_threads()} torch threads)"
