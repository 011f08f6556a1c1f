"""Compile every Triton kernel variant ligo_fast launches, for Hopper (sm_90), on a machine without a GPU.

The interpreter (CPU tests) checks the kernels' numbers but never compiles them: the compiler's own limits
(shared memory per block, register spills, layouts a config cannot lower to) only show on the GPU. This script
finds them before a GPU is lent:

1. it runs the real launchers (``ligo_fast.kernels.expand``: forward, backward, vectors) on ``meta`` tensors of
   real model shapes, with the kernels replaced by recorders, so every launch's arguments are exactly what a
   CUDA run would pass (strides, flags, block sizes, dtypes);
2. it specialises each launch the way Triton's own launcher does (its binder: strides equal to 1 become
   constants, 16-divisible pointers and ints get the divisibility hint), adds each autotuning config that
   ``tuning.prune_gemm_configs`` keeps for that launch (what the H200 would benchmark), and
3. compiles every distinct variant with ``triton.compile`` for ``GPUTarget("cuda", 90, 32)`` (PTX and cubin,
   Triton's own ptxas), then asks ptxas for registers and spills, and reads the TTGIR for the loop that holds the
   dots: how many ``scf.for`` enclose it (1: one flat loop; each enclosing loop drains and refills the software
   pipeline once per trip) and whether its loads were pipelined (asynchronous copies to shared memory issued
   ``num_stages - 1`` iterations ahead); ``--ttgir DIR`` also writes each variant's TTGIR there.

It fails (exit 1) when a variant does not compile or needs more shared memory than an H100/H200 block may have
(227 KiB); spills are reported, not fatal. It must run without ``TRITON_INTERPRET`` (it removes it and
re-executes itself when set).

    python benchmarks/triton_compile_check.py                  # BERT and Llama shapes, 3 dtypes, autotune configs
    python benchmarks/triton_compile_check.py --quick          # BERT-quick shapes, bf16 + fp32, heuristic configs
    python benchmarks/triton_compile_check.py --out benchmarks/results/triton_compile_sm90.md
    python benchmarks/triton_compile_check.py --quick --only group   # the grouped launches' kernels only
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):  # must be decided before triton is imported
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# the checkout this script lives in, before an installed ligo_fast (a worktree's kernels, not the venv's editable copy)
sys.path.insert(0, str(HERE.parent))
try:
    from ligo_fast.kernels import expand, group, tuning
except ImportError:  # a source tree without an install: kernels/ is ligo_fast.kernels' source
    sys.path.insert(0, str(HERE.parent))
    from kernels import expand, group, tuning  # type: ignore[no-redef]

from common import bert_shape, llama_xl_shape, module_kinds  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
SMEM_LIMIT = 227 * 1024  # max dynamic shared memory per block on H100/H200 (opt-in)
KERNELS = (
    "_ligo_mix_kernel",
    "_ligo_gemm_kernel",
    "_ligo_layer_grad_kernel",
    "_ligo_layer_grad_dot_kernel",
    "_ligo_vec_kernel",
)
# the grouped launches (kernels/group.py): one launch per stage for every module kind of a model
GROUP_KERNELS = (
    "_ligo_group_mix_kernel",
    "_ligo_group_gemm_kernel",
    "_ligo_group_layer_grad_kernel",
    "_ligo_group_depth_sum_kernel",
)
ORIGINAL = {name: getattr(expand, name) for name in KERNELS} | {name: getattr(group, name) for name in GROUP_KERNELS}
MODULE = {name: expand for name in KERNELS} | {name: group for name in GROUP_KERNELS}


class _Recorder:
    """Stands in for a ``@triton.jit`` kernel: ``k[grid](*args, **kwargs)`` records instead of launching."""

    def __init__(self, name: str, calls: list):
        self.name, self.calls = name, calls

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((self.name, args, kwargs))


class _Ptr:
    """What Triton's binder reads of a tensor argument: dtype and address (alignment)."""

    def __init__(self, t: torch.Tensor):
        self.dtype = t.dtype
        self._ptr = (1 << 20) + t.storage_offset() * t.element_size()  # allocations are 256-byte aligned

    def data_ptr(self) -> int:
        return self._ptr


def record_launches(shapes: list, dtypes: list[torch.dtype]) -> list:
    """Every kernel launch of forward + backward (matrices and vectors) for these module shapes."""
    calls: list = []
    for name in ORIGINAL:
        setattr(MODULE[name], name, _Recorder(name, calls))
    real_props = torch.cuda.get_device_properties
    torch.cuda.get_device_properties = lambda *_: SimpleNamespace(multi_processor_count=132)  # H200
    tf32, fp32_dot = torch.backends.cuda.matmul.allow_tf32, os.environ.pop("LIGO_FAST_FP32_DOT", None)
    try:
        for dtype in dtypes:
            # float32: tf32x3 (the default), tf32 (allow_tf32) and ieee (LIGO_FAST_FP32_DOT=ieee)
            for allow_tf32, dot in [(False, ""), (True, ""), (False, "ieee")] if dtype == torch.float32 else [(0, "")]:
                torch.backends.cuda.matmul.allow_tf32 = bool(allow_tf32)
                os.environ["LIGO_FAST_FP32_DOT"] = dot
                for m in shapes:
                    _record_module(m, dtype)
                if not allow_tf32 and not dot:  # the grouped kernels in the default precision only (compile time)
                    _record_group(shapes, dtype)
        # the layer gradients' FMA pass (more layers than tuning.LAYER_DOT_MAX) on the same shapes
        dot_max, tuning.LAYER_DOT_MAX = tuning.LAYER_DOT_MAX, 0
        try:
            for dtype in dtypes:
                for m in shapes:
                    _record_module(m, dtype)
        finally:
            tuning.LAYER_DOT_MAX = dot_max
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        os.environ.pop("LIGO_FAST_FP32_DOT", None)
        if fp32_dot is not None:
            os.environ["LIGO_FAST_FP32_DOT"] = fp32_dot
        torch.cuda.get_device_properties = real_props
        for name in ORIGINAL:
            setattr(MODULE[name], name, ORIGINAL[name])
    return calls


def _record_group(shapes, dtype: torch.dtype) -> None:
    """The grouped forward and backward of every module kind of ``shapes`` (per-layer E, as bench_expand; and the
    model's shared E on the input side of the matrices) in one group each."""
    meta = dict(device="meta", dtype=dtype)
    coef = torch.float32 if dtype == torch.float32 else dtype
    for shared in (False, True):
        Ws, ds, Eos, Eis = [], [], [], []
        for m in shapes:
            Ws.append(torch.empty(m.L1, m.o1, **meta) if m.i1 == 0 else torch.empty(m.L1, m.o1, m.i1, **meta))
            ds.append(torch.empty(m.L2, m.L1, device="meta", dtype=coef))
            Eos.append(torch.empty(m.L2, m.o2 - m.o1, m.o1, **meta))
            Ei = None if m.i1 == 0 else torch.empty(m.i2 - m.i1, m.i1, **meta)
            Eis.append(Ei if Ei is None or shared else Ei.unsqueeze(0).expand(m.L2, -1, -1).contiguous())
        outs = group.expand_group_fwd(Ws, ds, Eos, Eis)
        P = len(Ws)
        group.expand_group_bwd([torch.empty_like(o) for o in outs], Ws, ds, Eos, Eis, *[[True] * P] * 4)


def _record_module(m, dtype: torch.dtype) -> None:
    meta = dict(device="meta", dtype=dtype)
    depth = torch.empty(m.L2, m.L1, device="meta", dtype=torch.float32 if dtype == torch.float32 else dtype)
    if m.i1 == 0:  # a vector
        b = torch.empty(m.L1, m.o1, **meta)
        for E in (torch.empty(m.L2, m.o2 - m.o1, m.o1, **meta), torch.empty(m.o2 - m.o1, m.o1, **meta), None):
            for R in (None, torch.empty(m.L2, m.o2, **meta)):
                out = expand.expand_vec_fwd(b, depth, E, R)
                expand.expand_vec_bwd(torch.empty_like(out), b, depth, E)
        return
    W = torch.empty(m.L1, m.o1, m.i1, **meta)
    per_layer = (torch.empty(m.L2, m.o2 - m.o1, m.o1, **meta), torch.empty(m.L2, m.i2 - m.i1, m.i1, **meta))
    shared = (torch.empty(m.o2 - m.o1, m.o1, **meta), torch.empty(m.i2 - m.i1, m.i1, **meta))
    residual = torch.empty(m.L2, m.o2, m.i2, **meta)
    cases = ((per_layer, None), (shared, residual), ((per_layer[0], None), None), ((None, shared[1]), residual),
             ((None, None), residual))  # fmt: skip
    for (Eo, Ei), R in cases:
        out = expand.expand_fwd(W, depth, Eo, Ei, R)
        expand.expand_bwd(torch.empty_like(out), W, depth, Eo, Ei)


def variants(calls: list, autotune: bool, ttgir_dir: Path | None = None) -> dict:
    """Distinct compile jobs: key -> (kernel name, signature, constexprs, attrs, options dict, label, TTGIR folder,
    index)."""
    backend = make_backend(TARGET)
    binders = {n: create_function_from_signature(ORIGINAL[n].signature, ORIGINAL[n].params, backend) for n in ORIGINAL}
    jobs: dict = {}
    for name, args, kwargs in calls:
        fn = ORIGINAL[name]
        args = tuple(_Ptr(a) if isinstance(a, torch.Tensor) else a for a in args)
        launches = [kwargs]
        if autotune and name == "_ligo_gemm_kernel":
            named = dict(zip(fn.arg_names, args, strict=False))  # constexprs come as keywords
            flags = {k: v for k, v in kwargs.items() if k in ("HAS_D", "STRIP", "REDUCE_L", "DOT", "PRECISION")}
            kept = tuning.prune_gemm_configs(tuning.gemm_configs(), named, **flags)
            launches += [{**flags, **c.all_kwargs()} for c in kept]
        for kw in launches:
            bound, spec, opts = binders[name](*args, **kw)
            options, sig, consts, attrs = fn._pack_args(backend, kw, bound, spec, opts)
            key = repr((name, sorted(sig.items()), sorted(consts.items()), sorted(attrs.items()), options.num_warps,
                        options.num_stages))  # fmt: skip
            if key not in jobs:
                label = _label(name, bound, options)
                jobs[key] = (name, sig, consts, attrs, dict(options.__dict__), label, ttgir_dir, len(jobs))
    return jobs


def _label(name: str, bound: dict, options) -> str:
    """Kernel, dtype, its constexpr flags and tile: the variants one row of the table sums up."""
    short = name.replace("_ligo_", "").replace("_kernel", "")
    if name in GROUP_KERNELS:  # pointers come from a table: the element types are constexprs (the first: the operand)
        dtype = next(str(v) for v in bound.values() if isinstance(v, triton.language.dtype)).replace("fp", "float")
        dtype = {"float16": "float16", "bf16": "bfloat16", "float32": "float32"}.get(dtype, dtype)
    else:
        dtype = next(str(v.dtype).replace("torch.", "") for v in bound.values() if isinstance(v, _Ptr))
    const = {p.name for p in ORIGINAL[name].params if p.is_constexpr}
    flags = [f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in bound.items()
             if k in const and not k.startswith("BLOCK_") and k not in ("DOT", "GROUP_M")
             and not k.endswith("_T")]  # fmt: skip
    tile = "x".join(str(bound[k]) for k in bound if k.startswith("BLOCK_"))
    return f"{short} {dtype} {' '.join(flags)} tile {tile} w{options.num_warps} s{options.num_stages}"


def dot_loop(ttgir: str) -> str:
    """The loops holding the dots, from the TTGIR: ``depth D, pipelined`` for each (D = the ``scf.for`` loops around
    it, itself included: 1 when the dots sit in one flat loop; pipelined = asynchronous global-to-shared copies in
    it), ``no loop`` when no loop holds a dot, ``-`` for a kernel without dots."""
    stack: list[list] = []  # open regions: [is_for, holds a dot, holds an async copy] (not counting inner loops)
    loops = set()
    for line in ttgir.splitlines():
        text = line.strip()
        if text.startswith("}"):
            is_for, dot, copy = stack.pop()
            if is_for and dot:
                depth = 1 + sum(1 for r in stack if r[0])
                loops.add(f"depth {depth}, {'pipelined' if copy else 'not pipelined'}")
            if stack and not is_for:  # an scf.if's contents belong to the loop around it
                stack[-1][1] |= dot
                stack[-1][2] |= copy
        if stack and re.search(r"\b(ttng\.warp_group_dot|tt\.dot)\b ", text):
            stack[-1][1] = True
        if stack and ("async_copy_global_to_local" in text or "async_tma_copy_global_to_local" in text):
            stack[-1][2] = True
        if text.endswith("{"):
            stack.append([text.startswith("scf.for") or " scf.for " in text, False, False])
    if loops:
        return "; ".join(sorted(loops))
    return "no loop" if re.search(r"\b(ttng\.warp_group_dot|tt\.dot)\b ", ttgir) else "-"


def compile_one(job) -> dict:
    name, sig, consts, attrs, options, label, ttgir_dir, index = job
    t0 = time.perf_counter()
    row = dict(label=label, error="", regs=-1, spill=-1, smem=-1, mma="-", loop="-")
    try:
        compiled = triton.compile(ASTSource(ORIGINAL[name], sig, consts, attrs), target=TARGET, options=options)
        row["smem"] = int(compiled.metadata.shared)
        ptx = compiled.asm["ptx"]
        row.update(_ptxas_usage(ptx))
        # which units the dots run on: Hopper's async warpgroup MMA, Ampere-style mma.sync, or plain FMAs
        row["mma"] = "wgmma" if "wgmma.mma_async" in ptx else "mma.sync" if "mma.sync" in ptx else "fma"
        row["loop"] = dot_loop(compiled.asm["ttgir"])
        if ttgir_dir:
            stem = re.sub(r"[^A-Za-z0-9]+", "_", label)
            Path(ttgir_dir, f"{stem}_{index}.ttgir").write_text(compiled.asm["ttgir"])
    except Exception as e:  # noqa: BLE001 - reported per variant
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:200] if str(e).strip() else ''}"
    row["seconds"] = time.perf_counter() - t0
    return row


def _ptxas_usage(ptx: str) -> dict:
    from triton.backends.nvidia.compiler import get_ptxas  # the ptxas Triton itself uses for this arch

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        out = subprocess.run(
            [get_ptxas(90).path, "-v", "--gpu-name=sm_90a", str(src), "-o", str(Path(d) / "k.cubin")],
            capture_output=True,
            text=True,
        )
    text = out.stdout + out.stderr
    if out.returncode != 0:
        raise RuntimeError(f"ptxas -v failed: {text.strip()[-300:]}")
    regs = re.search(r"Used (\d+) registers", text)
    spill = [int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", text)]
    return dict(regs=int(regs.group(1)) if regs else -1, spill=max(spill) if spill else 0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="BERT-quick shapes, bf16 + fp32, no autotune configs")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, help="also write the table (markdown) here")
    ap.add_argument("--ttgir", type=Path, help="write each variant's TTGIR into this folder")
    ap.add_argument("--only", default="", help="compile only the kernels whose name contains this (e.g. group)")
    args = ap.parse_args(argv)

    if args.quick:
        shapes, dtypes, autotune = module_kinds(bert_shape(quick=True)), [torch.bfloat16, torch.float32], False
    else:
        shapes = module_kinds(bert_shape()) + module_kinds(llama_xl_shape())
        dtypes, autotune = [torch.bfloat16, torch.float16, torch.float32], True
    t0 = time.perf_counter()
    calls = [c for c in record_launches(shapes, dtypes) if args.only in c[0]]
    if args.ttgir:
        args.ttgir.mkdir(parents=True, exist_ok=True)
    jobs = variants(calls, autotune, args.ttgir)
    print(f"triton {triton.__version__}, target sm_90: {len(calls)} launches recorded, {len(jobs)} distinct variants",
          flush=True)  # fmt: skip
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = list(pool.map(compile_one, jobs.values()))
    bad = [r for r in rows if r["error"] or r["smem"] > SMEM_LIMIT]
    groups: dict = {}
    for r in rows:  # variants differing only in specialisation (strides of 1, alignment) share a row
        groups.setdefault(r["label"], []).append(r)
    lines = [
        f"Triton {triton.__version__}, torch {torch.__version__}, target sm_90 (compiled without a GPU): "
        f"{len(rows)} variants from {len(calls)} launches, {time.perf_counter() - t0:.0f} s",
        "",
        "| kernel, dtype, flags, tile, warps, stages | variants | dot units | max registers | max spill bytes "
        "| max shared KiB | dot loop | status |",
        "|---|---:|---|---:|---:|---:|---|---|",
    ]
    for label in sorted(groups):
        g = groups[label]
        errors = sorted({r["error"] for r in g if r["error"]})
        smem = max(r["smem"] for r in g)
        status = "; ".join(errors) or ("over the shared-memory limit" if smem > SMEM_LIMIT else "ok")
        lines.append(
            f"| {label} | {len(g)} | {'/'.join(sorted({r['mma'] for r in g}))} | {max(r['regs'] for r in g)} "
            f"| {max(r['spill'] for r in g)} "
            f"| {smem / 1024:.1f} | {'; '.join(sorted({r['loop'] for r in g}))} | {status} |"
        )
    spilled = sum(1 for r in rows if r["spill"] > 0)
    lines += ["", f"compiled {len(rows) - len(bad)}/{len(rows)}; with spills: {spilled}; failed: {len(bad)}"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
