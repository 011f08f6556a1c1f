"""Growth at scale: grow, operator step, materialize, streamed save; time and peak memory against the model's bytes.

Every number comes from a fresh process (``--stage``), so one stage's allocations do not hide another's peak.
Within a process, the kernel's resident high-water mark is reset just before the stage (``/proc/self/clear_refs``)
and the stage's increase is that mark minus the resident set at its start (loading the small model peaks above
where it settles, which would hide a later peak under ``ru_maxrss``); ``ligo-fast materialize``'s peak is compared
with the resident set of a process that only imports and reads its inputs (every page of them touched):

* ``inputs``: imports, the small model read from disk and the operator file read (what ``ligo-fast materialize``
  starts from); ``cli``: ``ligo-fast materialize`` itself (load the operator, stream the large model to disk);
* ``small``: imports and the small model; ``grown``: ``small`` plus ``ligo_fast.grow``;
* ``materialize``, ``produce`` (the bare production of every weight, the time yardstick), ``save``
  (``save_materialized``), ``step`` (an operator step, default mode, AdamW), ``step_mat`` (every weight
  produced: ``linear_mode="materialize"``), ``step_lean`` (the same, memory-lean), ``old`` (the previous
  materialize: a randomly initialised model loaded with copies), each from ``grown``. A step is measured after one
  warm-up step, as in training: AdamW's moments exist, which the estimate counts.

The small model's weights are read (every page touched) before a stage's mark is reset, so its increase is what the
stage allocates, not the pages of the model file it maps. The estimate (``LiGOModel.memory_plan`` /
``ligo_fast.plan_growth``) is printed next to each measured increase, with their ratio; the cli's against the
resident set of a process that read only the small model (it loads the operator itself). ``--malloc fixed`` runs the
stages with glibc's mmap threshold fixed at 1 MiB (``MALLOC_MMAP_THRESHOLD_``, as ``ligo-fast`` sets it itself):
freed tensors then go back to the system, so the resident set follows the live tensors the estimate counts.
A third shape (1B -> 7B, Llama-2-7B's widths) is only planned: its small model lives on meta.

    OMP_NUM_THREADS=1 python benchmarks/bench_scale.py --sizes 250m --out benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from common import publish, run_header

import ligo_fast

GIB = 2**30
STAGES = ("inputs", "cli", "small", "grown", "produce", "materialize", "save", "step", "step_mat", "step_lean", "old")
STEP_OPTIONS = {"step": {}, "step_mat": {"linear_mode": "materialize", "lean": False},
                "step_lean": {"linear_mode": "materialize", "lean": True}}  # fmt: skip


def _llama(L: int, h: int, f: int, heads: int, kv: int) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        num_hidden_layers=L, hidden_size=h, intermediate_size=f, num_attention_heads=heads, num_key_value_heads=kv,
        vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False,
    )  # fmt: skip


SIZES = {  # name -> (small, large): about 60M -> 250M, 250M -> 1B, 1B -> 7B (Llama-2-7B's widths); tiny: a smoke test
    "tiny": (_llama(2, 64, 176, 4, 2), _llama(4, 128, 352, 8, 4)),
    "60m": (_llama(8, 256, 704, 4, 2), _llama(16, 512, 1408, 8, 2)),  # the 250m shapes at half width (FSDP runs)
    "250m": (_llama(8, 512, 1408, 8, 2), _llama(16, 1024, 2816, 16, 4)),
    "1b": (_llama(8, 1024, 2816, 16, 4), _llama(16, 2048, 5632, 32, 8)),
    "7b": (_llama(16, 2048, 5632, 32, 8), _llama(32, 4096, 11008, 32, 32)),
}


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> int:
    """Reset the resident high-water mark (VmHWM) to the current resident set; returns that set."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def stage(name: str, work: Path, dtype: torch.dtype, tokens: int, repeats: int) -> dict:
    """Run one stage in this (fresh) process; returns its seconds and peak."""
    from safetensors.torch import load_file

    from ligo_fast.apps import cli

    out: dict = {}
    small_dir, op_dir = work / "small", work / "operator"
    if name in ("inputs", "cli"):
        if name == "inputs":
            small = transformers.LlamaForCausalLM.from_pretrained(small_dir, dtype=dtype)
            _touch(small.state_dict().values())
            out["rss_small"] = _status("VmRSS")
            op = load_file(str(op_dir / "operator.safetensors"))
            sum(float(t.float().sum()) for t in [*small.state_dict().values(), *op.values()])  # every page read
            out["rss"] = _status("VmRSS")
        else:
            t = time.perf_counter()
            rc = cli.main(["materialize", "--small", str(small_dir), "--operator", str(op_dir), "--out",
                           str(work / "cli_out"), "--dtype", str(dtype).split(".")[1], "--device", "cpu"])  # fmt: skip
            out["seconds"] = time.perf_counter() - t
            assert rc == 0
        return out | {"peak": _peak()}
    small = transformers.LlamaForCausalLM.from_pretrained(small_dir, dtype=dtype)
    if name == "small":
        return {"peak": _peak()}
    _touch(small.state_dict().values())  # the mapped file's pages: the input's, not the stage's
    large_cfg = transformers.LlamaConfig.from_pretrained(work / "large")
    start = _reset_peak()
    t = time.perf_counter()
    model = ligo_fast.grow(small, large_cfg, seed=0)
    out["grow_seconds"] = time.perf_counter() - t
    out["grow_delta"] = _status("VmHWM") - start
    ids = torch.randint(0, large_cfg.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))
    if name in STEP_OPTIONS:
        model.execution_options = ligo_fast.ExecutionOptions(**STEP_OPTIONS[name])
    mp = model.memory_plan(input_ids=ids)
    lean = model.lean_now((), {"input_ids": ids})
    out["estimate"] = {
        "growth": mp.growth, "materialize": mp.materialize(), "save": mp.streamed_save(),
        "step": (mp.lean if lean else mp.eager) - mp.resident, "lean": lean, "produced": mp.produced,
    }  # fmt: skip
    out["large_bytes"] = mp.produced
    if name == "grown":
        return out | {"peak": _peak()}

    def produce() -> None:
        with torch.no_grad():
            model.produce()

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()

    runs = {"produce": produce, "materialize": model.materialize, "save": lambda: model.save_materialized(work / "py"),
            "old": lambda: _old_materialize(model)}  # fmt: skip
    run = step if name in STEP_OPTIONS else runs[name]
    gc.collect()
    start = _reset_peak()
    if name in STEP_OPTIONS:  # the warm-up step, inside the mark: AdamW's moments stay, as the estimate counts
        step()
    out["seconds"] = _timed(run)
    out["delta"] = _status("VmHWM") - start
    if name in ("materialize", "save"):  # against the bare production, interleaved: the machine is shared
        out["ratios"] = [_timed(run) / _timed(produce) for _ in range(repeats)]
    return out | {"peak": _peak()}


@torch.no_grad()
def _old_materialize(model) -> torch.nn.Module:
    """materialize() before issue 20: a randomly initialised large model, loaded with copies of every tensor."""
    produced = model.produce()
    large = model.hf_class(model.config)
    state = {k: v.detach().clone() for k, v in model.large.state_dict().items()}
    state.update({k: v.detach().clone() for k, v in produced.items()})
    large.load_state_dict(state, strict=False)
    return large


def _touch(tensors) -> None:
    """Read every page of ``tensors`` (a model loaded from a mapped file becomes resident)."""
    sum(float(t.float().sum()) for t in tensors)


def malloc_env(malloc: str) -> dict[str, str]:
    """The environment of ``--malloc``: ``fixed``, glibc's mmap threshold at 1 MiB as ``ligo-fast`` sets it (read
    by glibc when a process starts); ``default``, nothing."""
    return {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)} if malloc == "fixed" else {}


def _run_stage(name: str, work: Path, dtype: str, tokens: int, repeats: int, malloc: str = "default") -> dict:
    cmd = [sys.executable, __file__, "--stage", name, "--work", str(work), "--dtype", dtype, "--tokens", str(tokens),
           "--repeats", str(repeats)]  # fmt: skip
    env = os.environ | malloc_env(malloc)
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if res.returncode != 0:
        raise SystemExit(f"stage {name} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def setup(work: Path, size: str, dtype: torch.dtype) -> None:
    small_cfg, large_cfg = SIZES[size]
    torch.manual_seed(0)
    small = transformers.LlamaForCausalLM(small_cfg).to(dtype)
    small.save_pretrained(work / "small")
    large_cfg.save_pretrained(work / "large")
    ligo_fast.grow(small, large_cfg, seed=0).save_operator(work / "operator")


def plan_only(size: str) -> tuple[float, object, int]:
    """(seconds, MemoryPlan, large parameters) of a growth planned from shapes (small model on meta)."""
    small_cfg, large_cfg = SIZES[size]
    t = time.perf_counter()
    with torch.device("meta"):
        small = transformers.LlamaForCausalLM(small_cfg)
    mp = ligo_fast.plan_growth(small, large_cfg, tokens=2048, seq_len=2048)
    return time.perf_counter() - t, mp, mp.produced // 4


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="250m", help="comma-separated of 250m, 1b (7b is always planned only)")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--tokens", type=int, default=128, help="tokens of the operator step's batch (one sequence)")
    ap.add_argument("--repeats", type=int, default=2, help="materialize/save vs produce timings, interleaved")
    ap.add_argument("--out", default=None, help="append the markdown to this file")
    ap.add_argument("--malloc", default="default", choices=("default", "fixed"),
                    help="glibc's allocator as is, or its mmap threshold fixed at 1 MiB in every stage")  # fmt: skip
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dtype = getattr(torch, args.dtype)
    if args.stage:
        print(json.dumps(stage(args.stage, Path(args.work), dtype, args.tokens, args.repeats)))
        return 0
    lines = run_header("Growth at scale (issue 20)", "cpu", "bench_scale.py", argv)
    lines += [
        f"- Llama, {args.dtype}, operator step on 1 x {args.tokens} tokens; each stage in a fresh process, peak = "
        "ru_maxrss; Δ = the stage's increase of the resident high-water mark over its starting resident set (cli: "
        "its peak over the resident set of a process that imported, read the small model and the operator file and "
        "touched every page of them); x = Δ / the large model's bytes; estimate: "
        "memory_plan (step: the eager or lean estimate in the forms the step runs, above the operator, a "
        "warm-up step and the measured one inside the mark); Δ / est.: the ratio (cli: its peak over a process "
        f"that read only the small model, against growth + streamed save); allocator: {args.malloc}",
        "",
        "| growth | stage | seconds | peak GiB | Δ GiB | Δ x large | estimate GiB | Δ / est. | goal |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for size in [s for s in args.sizes.split(",") if s]:
        work = Path(tempfile.mkdtemp(prefix=f"bench_scale_{size}_"))
        try:
            setup(work, size, dtype)
            res = {s: _run_stage(s, work, args.dtype, args.tokens, args.repeats, args.malloc)
                   for s in args.stages.split(",")}  # fmt: skip
        finally:
            shutil.rmtree(work, ignore_errors=True)
        ref = next(r for r in res.values() if "large_bytes" in r)
        big, est = ref["large_bytes"], ref["estimate"]
        label = f"{size} ({big / 4 / 1e6:.0f}M params, {big / GIB:.2f} GiB)"
        goals = {"cli": 0.5, "materialize": 1.25}
        for s, r in res.items():
            if s in ("inputs", "small"):
                lines.append(f"| {label} | {s} | | {r['peak'] / GIB:.2f} | | | | | |")
                continue
            secs = r["grow_seconds"] if s == "grown" else r["seconds"]
            d = r["peak"] - res["inputs"]["rss"] if s == "cli" else r["grow_delta" if s == "grown" else "delta"]
            own = r.get("estimate", est)  # a step's own: its options change the plan
            e = {"grown": own["growth"], "materialize": own["materialize"], "save": own["save"],
                 "cli": own["growth"] + own["save"], "produce": own["materialize"]}.get(s)  # fmt: skip
            e = own["step"] if s in STEP_OPTIONS else e
            vs = r["peak"] - res["inputs"]["rss_small"] if s == "cli" else d  # what the estimate covers
            goal = ""
            if s in goals:
                goal = f"Δ ≤ {goals[s]}x: {'met' if d <= goals[s] * big else 'missed'}"
            if "ratios" in r:
                q = r["ratios"]
                goal += "; " if goal else ""
                goal += f"time {min(q):.2f}-{max(q):.2f}x produce"
                goal += f" (≤ 1.2x: {'met' if max(q) <= 1.2 else 'missed'})" if s == "materialize" else ""
            lines.append(
                f"| {label} | {s} | {secs:.1f} | {r['peak'] / GIB:.2f} | {d / GIB:.2f} | {d / big:.2f} | "
                f"{'' if e is None else f'{e / GIB:.2f}'} | {'' if not e else f'{vs / e:.2f}'} | {goal} |"
            )
    secs, mp, n = plan_only("7b")
    lines += [
        "",
        f"- 1B -> 7B (16L/2048H -> 32L/4096H, SwiGLU 11008, vocab 32000; {n / 1e9:.2f}B parameters), planned from "
        f"meta shapes in {secs:.2f} s (fp32): large model {mp.produced / GIB:.1f} GiB, growth "
        f"{mp.growth / GIB:.2f} GiB, operator step on 1 x 2048 tokens eager {mp.eager / GIB:.1f} / lean "
        f"{mp.lean / GIB:.1f} GiB, materialize {mp.materialize() / GIB:.1f} GiB (bf16 output "
        f"{mp.materialize(2) / GIB:.1f}), streamed save {mp.streamed_save() / GIB:.2f} GiB (bf16 "
        f"{mp.streamed_save(2) / GIB:.2f})",
    ]
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
