"""The sharded save under FSDP2 (issue 20 item 4): per-rank peak memory of ``save_materialized_distributed`` on 2
gloo processes against one process's ``save_materialized``, the same grown Llama (bench_scale's shapes).

Each number comes from a fresh process; the resident high-water mark is reset right before the save
(``/proc/self/clear_refs``, after handing freed memory back with glibc's ``malloc_trim``) and Δ is the mark minus
the resident set at that moment, as in ``bench_scale.py``. The ranks start from the same grown model, sharded with
``ligo_fast.distributed.shard`` (FSDP2, one group). The outputs are compared tensor by tensor (bit for bit).

    OMP_NUM_THREADS=1 python benchmarks/bench_sharded_save.py --size 250m --out benchmarks/results/x.md
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
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import transformers
from bench_scale import _peak, _reset_peak, _status, setup
from common import publish, run_header
from safetensors import safe_open

import ligo_fast
from ligo_fast import distributed as D

GIB = 2**30
WORLD = 2


def _grown(work: Path, dtype: torch.dtype):
    small = transformers.LlamaForCausalLM.from_pretrained(work / "small", dtype=dtype)
    return ligo_fast.grow(small, transformers.LlamaConfig.from_pretrained(work / "large"), seed=0)


def _measure(fn) -> tuple[int, float]:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    start = _reset_peak()
    t = time.perf_counter()
    fn()
    return _status("VmHWM") - start, time.perf_counter() - t


def _rank(rank: int, work: str, dtype: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{work}/store", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=1800))  # fmt: skip
    try:
        from torch.distributed.device_mesh import init_device_mesh

        model = D.shard(_grown(Path(work), getattr(torch, dtype)), mesh=init_device_mesh("cpu", (WORLD,)))
        dist.barrier()
        delta, secs = _measure(lambda: D.save_materialized_distributed(model, out))
        Path(f"{work}/rank{rank}.json").write_text(json.dumps({"delta": delta, "seconds": secs, "peak": _peak()}))
    finally:
        dist.destroy_process_group()


def _single(work: Path, dtype: str, out: str) -> dict:
    model = _grown(work, getattr(torch, dtype))
    delta, secs = _measure(lambda: model.save_materialized(out))
    return {"delta": delta, "seconds": secs, "peak": _peak(), "large_bytes": model.num_parameters() * 4}


def _tensors(d: Path) -> dict:
    out = {}
    for f in sorted(p for p in d.iterdir() if p.suffix == ".safetensors"):
        with safe_open(str(f), "pt") as s:
            out.update({k: s.get_tensor(k) for k in s.keys()})  # noqa: SIM118
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="250m", choices=("tiny", "250m", "1b"))
    ap.add_argument("--dtype", default="float32", choices=("float32",))
    ap.add_argument("--out", default=None)
    ap.add_argument("--single", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.single:
        print(json.dumps(_single(Path(args.single), args.dtype, str(Path(args.single) / "one"))))
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench_sharded_"))
    try:
        setup(work, args.size, torch.float32)
        res = subprocess.run([sys.executable, __file__, "--single", str(work), "--dtype", args.dtype],
                             capture_output=True, text=True, check=True)  # fmt: skip
        one = json.loads(res.stdout.strip().splitlines()[-1])
        ctx = mp.start_processes(_rank, args=(str(work), args.dtype, str(work / "dist")), nprocs=WORLD,
                                 start_method="spawn")  # fmt: skip
        del ctx
        ranks = [json.loads((work / f"rank{r}.json").read_text()) for r in range(WORLD)]
        a, b = _tensors(work / "one"), _tensors(work / "dist")
        equal = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    big = one["large_bytes"]
    lines = run_header("Sharded save under FSDP2 (issue 20 item 4)", "cpu", "bench_sharded_save.py", argv)
    lines += [
        f"- Llama {args.size} ({big / 4 / 1e6:.0f}M parameters, {big / GIB:.2f} GiB in fp32), output {args.dtype}, "
        f"{WORLD} gloo processes (FSDP2) vs 1; Δ = the save's rise of the resident high-water mark over its start; "
        f"outputs equal bit for bit: {equal}",
        "",
        "| run | seconds | Δ GiB | Δ x large | Δ / single-process Δ | process peak GiB | peak / single peak |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| 1 process (save_materialized) | {one['seconds']:.1f} | {one['delta'] / GIB:.3f} | "
        f"{one['delta'] / big:.2f} | 1.00 | {one['peak'] / GIB:.2f} | 1.00 |",
    ]
    for r, x in enumerate(ranks):
        lines.append(
            f"| rank {r} of {WORLD} (save_materialized_distributed) | {x['seconds']:.1f} | {x['delta'] / GIB:.3f} | "
            f"{x['delta'] / big:.2f} | {x['delta'] / one['delta']:.2f} | {x['peak'] / GIB:.2f} | "
            f"{x['peak'] / one['peak']:.2f} |"
        )
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
