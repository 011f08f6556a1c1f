"""A whole growth under FSDP2 (issue 20 item 4's goal): per-rank peak memory of grow + operator steps on 2 gloo
processes (``ligo_fast.distributed.shard``) against one process doing the same, default and memory-lean options.

Every number comes from a fresh process that has loaded the small model and the large config. The resident
high-water mark is reset there (``/proc/self/clear_refs`` after ``malloc_trim``, as in ``bench_sharded_save.py``)
and the process then grows (a rank also shards), and runs ``--steps`` AdamW steps of the operator on one fixed
batch; ``run Δ`` = the mark at the end minus the resident set at the reset, ``steps Δ`` = the same with the mark
reset again after the growth (so it holds what the steps add on top of the grown/sharded model). The loss of the
last step is printed for each process: the ranks must agree with the single process (same batch on every rank).

``--split``: data parallel, each rank takes its sequence of the batch (the ranks' mean loss is the single
process's). ``--configs``: default, lean, their ``train_small`` variants and ``linear_mode="materialize"`` ones;
``lean+per_block`` (and ``lean+train_small+per_block``): the ranks shard with ``shard(per_block=True)`` (an FSDP2
unit per block; ``lean+per_block4``: per 4 blocks, ``block_layers=4``), the single process runs lean.
``--malloc fixed``: every process runs with glibc's mmap threshold fixed at 1 MiB (``MALLOC_MMAP_THRESHOLD_``, as
``ligo-fast`` sets it and ``bench_scale.py --malloc fixed``), so freed tensors go back to the system and the resident
set follows the live tensors rather than the heap's history.

    OMP_NUM_THREADS=1 python benchmarks/bench_fsdp_growth.py --size 250m --tokens 64 --steps 3 --split --out x.md
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import transformers
from bench_scale import _reset_peak, _status, malloc_env, setup
from common import publish, run_header

import ligo_fast
from ligo_fast import distributed as D

GIB = 2**30
WORLD = 2
CONFIGS = {  # name -> (ExecutionOptions.lean, train_small, ExecutionOptions.linear_mode)
    "default": (None, False, "auto"), "lean": (True, False, "auto"), "default+train_small": (None, True, "auto"),
    "lean+train_small": (True, True, "auto"), "materialize": (False, False, "materialize"),
    "lean+materialize": (True, False, "materialize"),
    "lean+per_block": (True, False, "auto"), "lean+train_small+per_block": (True, True, "auto"),
    "lean+per_block4": (True, False, "auto"),
}  # fmt: skip
# ranks: shard(per_block=True, block_layers=...); one process: as lean
PER_BLOCK = {"lean+per_block": 1, "lean+train_small+per_block": 1, "lean+per_block4": 4}


def _reset() -> int:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return _reset_peak()


def _run(work: Path, config: str, tokens: int, steps: int, sharded: bool, split: bool = False) -> dict:
    """Grow (and shard), then ``steps`` operator steps; the memory rises of the whole run and of the steps.

    ``split``: the batch is WORLD sequences of ``tokens / WORLD``; a rank (``sharded``) takes its own one.
    """
    lean, train_small, linear_mode = CONFIGS[config]
    small = transformers.LlamaForCausalLM.from_pretrained(work / "small", dtype=torch.float32)
    large_cfg = transformers.LlamaConfig.from_pretrained(work / "large")
    shape = (WORLD, tokens // WORLD) if split else (1, tokens)
    ids = torch.randint(0, large_cfg.vocab_size, shape, generator=torch.Generator().manual_seed(0))
    if split and sharded:
        ids = ids[dist.get_rank() : dist.get_rank() + 1]
    start = _reset()
    model = ligo_fast.grow(small, large_cfg, seed=0, train_small=train_small)
    del small
    model.execution_options = ligo_fast.ExecutionOptions(lean=lean, linear_mode=linear_mode)
    out: dict = {}
    if not sharded:
        m = model.memory_plan(input_ids=ids)
        out["plan"] = {"resident": m.resident, "optimizer": m.optimizer, "produced": m.produced,
                       "produced_layer": m.produced_layer, "produced_global": m.produced_global,
                       "activations": m.activations, "eager": m.eager, "lean": m.lean, "chunk": m.chunk,
                       "params": sum(p.numel() for p in model.parameters()) * 4,
                       "buffers": sum(b.numel() * b.element_size() for b in model.buffers())}  # fmt: skip
    if sharded:
        from torch.distributed.device_mesh import init_device_mesh

        model = D.shard(model, mesh=init_device_mesh("cpu", (WORLD,)), per_block=config in PER_BLOCK,
                        block_layers=PER_BLOCK.get(config, 1))  # fmt: skip
        dist.barrier()
    out["grown_delta"] = _status("VmHWM") - start
    out["grown_rss"] = _status("VmRSS") - start
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    steps_start = _reset()
    loss = None
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
    end = _status("VmHWM")
    out |= {"steps_delta": end - steps_start, "run_delta": max(end, start + out["grown_delta"]) - start,
            "loss": float(loss.detach()),
            "large_bytes": model.num_parameters() * 4 if not sharded else None}  # fmt: skip
    return out


def _rank(rank: int, work: str, config: str, tokens: int, steps: int, split: bool) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{work}/store_{config}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=1800))  # fmt: skip
    try:
        res = _run(Path(work), config, tokens, steps, sharded=True, split=split)
        Path(f"{work}/{config}_rank{rank}.json").write_text(json.dumps(res))
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="250m", choices=("tiny", "60m", "250m", "1b"))
    ap.add_argument("--tokens", type=int, default=128, help="tokens of the fixed batch (one sequence)")
    ap.add_argument("--steps", type=int, default=3, help="operator steps (at least 1)")
    ap.add_argument("--configs", default="default,lean", help=f"comma-separated, of {', '.join(CONFIGS)}")
    ap.add_argument("--split", action="store_true", help="data parallel: each rank takes 1/world of the batch")
    ap.add_argument("--out", default=None)
    ap.add_argument("--malloc", default="default", choices=("default", "fixed"),
                    help="glibc's allocator as is, or its mmap threshold fixed at 1 MiB in every process")  # fmt: skip
    ap.add_argument("--single", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    configs = args.configs.split(",")
    if unknown := [c for c in configs if c not in CONFIGS]:
        ap.error(f"unknown config(s) {', '.join(unknown)}; valid: {', '.join(CONFIGS)}")
    if args.single:
        work, config = args.single.split("::")
        print(json.dumps(_run(Path(work), config, args.tokens, args.steps, sharded=False, split=args.split)))
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench_fsdp_growth_"))
    os.environ.update(malloc_env(args.malloc))  # for the single process and the spawned ranks
    results = {}
    try:
        setup(work, args.size, torch.float32)
        for config in configs:
            cmd = [sys.executable, __file__, "--single", f"{work}::{config}", "--tokens", str(args.tokens),
                   "--steps", str(args.steps), *(["--split"] if args.split else [])]  # fmt: skip
            one = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            mp.start_processes(_rank, args=(str(work), config, args.tokens, args.steps, args.split), nprocs=WORLD,
                               start_method="spawn")  # fmt: skip
            results[config] = (one, [json.loads((work / f"{config}_rank{r}.json").read_text()) for r in range(WORLD)])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    big = next(iter(results.values()))[0]["large_bytes"]
    lines = run_header("A whole growth under FSDP2 (issue 20 item 4's goal)", "cpu", "bench_fsdp_growth.py", argv)
    batch = (
        f"{WORLD} x {args.tokens // WORLD} tokens, one sequence per rank (data parallel; the ranks' mean loss "
        "is the single process's)"
        if args.split
        else f"1 x {args.tokens} tokens, the same on every rank"
    )
    lines += [
        f"- Llama {args.size} ({big / 4 / 1e6:.0f}M parameters, {big / GIB:.2f} GiB in fp32), grow + {args.steps} "
        f"AdamW operator steps on {batch}; {WORLD} gloo processes (FSDP2) vs 1; run Δ = the whole "
        "run's rise of the resident high-water mark over the process with the small model loaded; steps Δ = the "
        f"rise during the steps over the grown (and sharded) model; allocator: {args.malloc}",
        "",
        "| options | process | grown Δ GiB | steps Δ GiB | run Δ GiB | run Δ x large | run Δ / 1 process | last loss |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for config, (one, ranks) in results.items():
        for name, x in [("1 process", one), *((f"rank {r} of {WORLD}", x) for r, x in enumerate(ranks))]:
            lines.append(
                f"| {config} | {name} | {x['grown_delta'] / GIB:.3f} | {x['steps_delta'] / GIB:.3f} | "
                f"{x['run_delta'] / GIB:.3f} | {x['run_delta'] / big:.2f} | {x['run_delta'] / one['run_delta']:.2f} | "
                f"{x['loss']:.5f} |"
            )
    lines += ["", "Estimate (`LiGOModel.memory_plan` of the single process, GiB):", ""]
    lines += ["| options | resident | of it buffers | operator params | optimizer | produced (layer / global) | "
              "activations | eager | lean (chunk) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for config, (one, _) in results.items():
        p = {k: (v / GIB if k != "chunk" else v) for k, v in one["plan"].items()}
        lines.append(
            f"| {config} | {p['resident']:.3f} | {p['buffers']:.3f} | {p['params']:.3f} | {p['optimizer']:.3f} | "
            f"{p['produced']:.3f} ({p['produced_layer']:.3f} / {p['produced_global']:.3f}) | {p['activations']:.3f} | "
            f"{p['eager']:.3f} | {p['lean']:.3f} ({one['plan']['chunk']}) |"
        )
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
