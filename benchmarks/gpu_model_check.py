"""What only a GPU can check of the whole model: the execution plan, the binder and materialisation on CUDA.

A tiny grown model (Llama with grouped-query attention and BERT, odd sizes, ``rand`` depth and width so no
coefficient is zero) is built once on the CPU in float64 and run eagerly (every weight produced, the ``torch``
backend): the oracle. Its copy on ``--device`` (float32) then runs forward and backward under each
:class:`ligo_fast.ExecutionOptions` of :data:`VARIANTS` (lean and eager, factored and produced, the defaults) with
each backend that loads there:

- ``plan``: output and every operator gradient against the oracle (relative to the largest entry of each tensor,
  the worst reported), and the execution plan is what was asked (lean or eager; factored linears or none);
- ``binder``: nothing is left installed on the large model after the forward and the backward
  (:func:`ligo_fast.binding.installed`);
- ``materialize`` / ``save_materialized`` (the automatic backend: Triton on CUDA, with the extension's multi-tensor
  vector op where it loaded): the device's produced weights against the oracle's (the CPU's), and the saved
  shards (small ``max_shard_size``: several files) against the oracle and against ``materialize()`` on the same
  device (whether bit-equal is in the note).

Each check prints one ``PASS``/``FAIL`` line with its numbers (an error is a FAIL with its first line; a backend
that does not load is a ``SKIP``, but Triton on CUDA a ``FAIL``) and never stops the others; ``--jsonl`` appends
each as a row (``"section": "model", "kind": "check"``, or ``"skip"``) that ``gpu_summary.py`` puts in the
correctness table. Exit status 1 when any check failed. Run by ``gpu_check.sh`` (part 2 on a GPU; its dry run on
the CPU with Triton interpreted)::

    python benchmarks/gpu_model_check.py --device cuda --jsonl out/rows.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import traceback
from pathlib import Path

import torch
import transformers as T
from safetensors.torch import load_file

import ligo_fast
from ligo_fast import backends
from ligo_fast.binding import installed

# (label, options): lean with both linear modes, the eager factored path, and the defaults (the plan decided from the
# device's memory budget and the cost model: whatever it picks must be right)
VARIANTS = [
    ("lean factored", dict(lean=True, linear_mode="factored")),
    ("lean materialize", dict(lean=True, linear_mode="materialize")),
    ("eager factored", dict(lean=False, linear_mode="factored")),
    ("auto", dict()),
]
# float32 on the device vs float64, relative to each tensor's largest entry: a few depth gradients (BERT's post-norm
# LayerNorm coefficients) sum terms that cancel, and reach 2e-4 with the CPU's float32 alone; a wrong kernel is off
# by far more
TOL = {torch.float32: 1e-3}
BATCH, SEQ = 3, 5
unavailable: dict[str, str] = {}  # backend -> why it does not load (filled by main)


def _configs(name: str):
    if name == "llama":
        kw = dict(vocab_size=67, max_position_embeddings=32, num_attention_heads=4)
        return (
            T.LlamaConfig(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_key_value_heads=2, **kw),
            T.LlamaConfig(hidden_size=48, intermediate_size=72, num_hidden_layers=5, num_key_value_heads=4, **kw),
        )
    kw = dict(vocab_size=67, max_position_embeddings=16, num_attention_heads=4)
    return (
        T.BertConfig(hidden_size=32, intermediate_size=40, num_hidden_layers=2, **kw),
        T.BertConfig(hidden_size=48, intermediate_size=72, num_hidden_layers=5, **kw),
    )


def _oracle(name: str) -> ligo_fast.LiGOModel:
    small_cfg, large_cfg = _configs(name)
    torch.manual_seed(0)
    small = (T.LlamaForCausalLM if name == "llama" else T.BertForMaskedLM)(small_cfg).eval()
    model = ligo_fast.grow(small, large_cfg, seed=0, depth_init="rand", width_init="rand").double().eval()
    model.execution_options = ligo_fast.ExecutionOptions(lean=False, linear_mode="materialize", backend="torch")
    return model


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))


def _worst(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> tuple[float, str]:
    if sorted(got) != sorted(want):
        raise AssertionError(f"names differ: {sorted(set(got) ^ set(want))[:3]}")
    missing = [k for k in want if (got[k] is None) != (want[k] is None)]
    if missing:
        raise AssertionError(f"a tensor (gradient) on one side only: {missing[:3]}")
    return max((_rel(got[k], want[k]), k) for k in want if want[k] is not None)


def _step(model: ligo_fast.LiGOModel, ids: torch.Tensor, up: torch.Tensor):
    """Output and operator gradients of one forward + backward with upstream gradient ``up``, and what the
    binder left installed after the forward and after the backward."""
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids).logits
    left = len(installed(model.large))
    (out * up.to(out)).sum().backward()
    left += len(installed(model.large))
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return out.detach(), grads, left


class Checks:
    def __init__(self, jsonl: str | None, device: str, dtype: torch.dtype):
        self.jsonl, self.device, self.dtype, self.failed = jsonl, device, dtype, 0

    def record(self, shape: str, label: str, ok: bool | None, rel=None, tol=None, where="", error=None, note=""):
        word = "SKIP" if ok is None else "PASS" if ok else "FAIL"
        self.failed += ok is False
        nums = f"rel {rel:.1e} (tol {tol:.0e}), worst in {where};" if rel is not None else ""
        print(f"{word} model {shape} {self.dtype_name} {label}: {nums} {note} {error or ''}".rstrip(),
              flush=True)  # fmt: skip
        if self.jsonl and ok is None:  # gpu_summary.py lists skips under the correctness table
            with open(self.jsonl, "a") as f:
                f.write(
                    json.dumps(dict(section="model", kind="skip", note=f"model {shape} {label}: {note or error}"))
                    + "\n"
                )
        elif self.jsonl:
            row = dict(section="model", kind="check", ref=f"vs float64 CPU, {self.device}", shape=shape,
                       dtype=self.dtype_name, provider=label, label=label, ok=ok, rel=rel, tol=tol,
                       where=where or None, error=error, note=note or None)  # fmt: skip
            with open(self.jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).split(".")[1]

    def guarded(self, shape: str, label: str, fn) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - one check's failure is its FAIL line, the others run
            first = (str(e).strip().splitlines() or [""])[0][:200]
            self.record(shape, label, False, error=f"{type(e).__name__}: {first}")
            traceback.print_exc(limit=3, file=sys.stdout)


def check_model(name: str, backend_names: list[str], checks: Checks) -> None:
    dev, dtype, tol = torch.device(checks.device), checks.dtype, TOL[checks.dtype]
    oracle = _oracle(name)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, oracle.config.vocab_size, (BATCH, SEQ), generator=gen)
    up = torch.randn(BATCH, SEQ, oracle.config.vocab_size, generator=gen, dtype=torch.float64)
    model = copy.deepcopy(oracle).to(dev, dtype)  # before any forward: the same operator, nothing bound
    ref_out, ref_grads, _ = _step(oracle, ids, up)
    ids_dev = ids.to(dev)

    for backend in backend_names:
        for label, options in VARIANTS:
            what = f"{backend} {label}"

            def plan_and_binder(backend=backend, options=options, what=what):
                model.execution_options = ligo_fast.ExecutionOptions(backend=backend, **options)
                with torch.enable_grad():  # the plan of the step below (one is decided per gradient mode)
                    plan = model.execution_plan((), dict(input_ids=ids_dev))
                want_factored = options.get("linear_mode", "auto") == "factored"
                if options and (plan.lean != options["lean"] or bool(plan.forms) != want_factored):
                    raise AssertionError(f"plan is lean={plan.lean} with {len(plan.forms)} factored linears")
                out, grads, left = _step(model, ids_dev, up)
                rel_out = _rel(out, ref_out)
                rel_grad, where = _worst(grads, ref_grads)
                note = f"lean={plan.lean} chunk={plan.chunk} factored={len(plan.forms)}; output rel {rel_out:.1e}"
                if not options:
                    note += f"; budget {model.memory_budget / 2**30:.1f} GiB"
                worst, where = max((rel_out, "the output"), (rel_grad, where))
                checks.record(name, f"plan: {what}", worst <= tol, worst, tol, where, note=note)
                checks.record(name, f"binder: {what}", left == 0, note=f"{left} value(s) left installed")

            if backend in unavailable:  # Triton must load on a GPU; the extension's build has its own section
                must = backend == "triton" and dev.type == "cuda"
                checks.record(name, f"plan: {what}", False if must else None, error=unavailable[backend])
                continue
            checks.guarded(name, f"plan: {what}", plan_and_binder)

    def materialize():
        got = model.materialize().state_dict()
        want = oracle.materialize().state_dict()
        rel, where = _worst(got, want)
        checks.record(name, "materialize()", rel <= tol, rel, tol, where, note=f"{len(got)} tensors")
        with tempfile.TemporaryDirectory() as tmp:
            files = model.save_materialized(tmp, max_shard_size=40_000)
            saved = {}
            for f in sorted(Path(tmp).glob("*.safetensors")):
                saved.update(load_file(f))
            mine = {k: v.cpu() for k, v in got.items() if k in saved}
            rel_mine, _ = _worst(saved, mine)  # raises when a name is missing from either
            unequal = [k for k in saved if not torch.equal(saved[k], mine[k])]
            rel, where = _worst(saved, {k: want[k] for k in saved})
            note = (f"{len(saved)} tensors in {len(files)} files; vs materialize() here: rel {rel_mine:.1e}, "
                    f"{len(unequal)} not bit-equal{f' (e.g. {unequal[0]})' if unequal else ''}")  # fmt: skip
            worst = max(rel, rel_mine)
            checks.record(name, "save_materialized()", worst <= tol, worst, tol, where, note=note)

    checks.guarded(name, "materialize()", materialize)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backends", default="triton,cpp,torch", help="comma-separated; those that do not load: SKIP")
    ap.add_argument("--models", default="llama,bert", help="comma-separated: llama, bert")
    ap.add_argument("--jsonl", default=None, help="append every check as a JSON line to this file")
    args = ap.parse_args(argv)
    names = [b for b in args.backends.split(",") if b]
    for b in names:
        try:
            backends.load(b)
        except backends.BackendUnavailable as e:
            unavailable[b] = str(e)
    checks = Checks(args.jsonl, args.device, torch.float32)
    for name in [m for m in args.models.split(",") if m]:
        checks.guarded(name, "build", lambda name=name: check_model(name, names, checks))
    print(f"model checks: {checks.failed} failed", flush=True)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
