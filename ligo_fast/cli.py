"""The ``ligo-fast`` command line (also ``python -m ligo_fast.cli``).

    ligo-fast grow --small SMALL_DIR --large-config large.json --data corpus/ notes.txt --steps 100 --out grown/
    ligo-fast materialize --small SMALL_DIR --operator grown/ --out hf_model/
    ligo-fast info
    ligo-fast bench

``grow`` loads the small model from a local Hugging Face directory (the class named first in ``architectures`` of
its ``config.json``; a ``*ForCausalLM``/``*LMHeadModel`` or ``*ForMaskedLM`` class), reads the large config from a
JSON file (a full HF ``config.json``, or only the fields that change: the others are taken from the small config,
except those the config class derives from other fields, such as Llama's ``head_dim``), trains the LiGO operator
with AdamW at a constant learning rate, and writes into ``--out`` the operator (``operator.safetensors`` +
``ligo_config.json``) and the materialised large model (``config.json`` + ``model.safetensors``, and the small
model's tokenizer when it has one).

Data: text files (directories are read recursively), concatenated in sorted order. Tokens come from the small
model's tokenizer when its directory has one, else they are the bytes 0..255 (the model's vocabulary must hold
them). Batch ``k`` is drawn from a generator seeded by ``(seed, k)``: random windows of ``--seq-len`` tokens, so a
resumed run sees the same batches. Causal LMs: next-token loss (``labels = input_ids``). Masked LMs: 15% of the
positions (at least one a batch) are replaced by the mask id (the tokenizer's, else the config's
``mask_token_id``, else ``vocab_size - 1``) and predicted (``labels`` -100 elsewhere).

Resuming: every ``--save-every`` steps, on Ctrl-C and at the end, the operator, the optimizer and the step count
go to ``--out/checkpoint/step-NNNNNNNN/`` (written under a temporary name, then renamed; ``checkpoint/latest``
is replaced atomically). Rerunning the same command resumes after the last finished step; a larger ``--steps``
continues a finished run. Options that change the result (data, learning rate, seeds, ...) must match.

Exit codes: 0 done; 2 a user error (one line on stderr); 130 interrupted (the checkpoint was saved).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

PROG = "ligo-fast"
CKPT = "checkpoint"
LATEST = "latest"
TRAINER = "trainer.pt"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
MASKED_SUFFIXES = ("ForMaskedLM",)
MASK_FRACTION = 0.15
SIZE_KEYS = (
    "hidden_size",
    "n_embd",
    "intermediate_size",
    "num_hidden_layers",
    "n_layer",
    "num_attention_heads",
    "n_head",
    "num_key_value_heads",
)  # shown in the first line of grow
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model")
# options that change the numbers a run produces; a resumed run must repeat them
RUN_KEYS = (
    "small",
    "large_config",
    "data",
    "lr",
    "batch_size",
    "seq_len",
    "seed",
    "depth_init",
    "width_init",
    "tie",
    "residual",
    "max_grad_norm",
    "dtype",
)

# test hook: called as hook(step) after a step's backward, before its optimizer update
_STEP_HOOK: Callable[[int], None] | None = None


class UserError(Exception):
    """A mistake in the command line or its inputs: reported as one line, exit code 2."""


# ---------------------------------------------------------------------------------------------- inputs
def load_small(path: str, dtype: torch.dtype = torch.float32):
    """(model, task) from a local HF directory; task is ``causal``, ``masked`` or ``other``."""
    d = Path(path)
    if not d.is_dir():
        raise UserError(f"--small {path}: no such directory")
    import transformers

    import ligo_fast

    cfg_file = d / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"--small {path}: no config.json (expected a directory written by save_pretrained)")
    cfg = _read_json(cfg_file, "--small config.json")
    names = cfg.get("architectures") or []
    if not names:
        raise UserError(f"--small {path}: config.json names no architectures, so the model class is unknown")
    name = names[0]
    supported = ligo_fast.supported_classes()
    if name not in supported or not hasattr(transformers, name):
        raise UserError(f"unsupported model class {name}; ligo_fast grows: {', '.join(supported)}")
    try:
        model = getattr(transformers, name).from_pretrained(str(d), dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"--small {path}: cannot load the {name} weights ({_one_line(e)})") from e
    task = "causal" if name.endswith(CAUSAL_SUFFIXES) else "masked" if name.endswith(MASKED_SUFFIXES) else "other"
    return model, task


def load_large_config(path: str, small_config):
    """The large HF config from a JSON file; fields it lacks come from ``small_config`` (see the module doc)."""
    import transformers

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--large-config {path}: no such file")
    given = _read_json(p, f"--large-config {path}")
    if not isinstance(given, dict):
        raise UserError(f"--large-config {path}: expected a JSON object of config fields")
    try:
        mt = given.get("model_type")
        if mt is not None and mt != small_config.model_type:
            # another family: build it as given and let grow() explain why it does not fit
            return transformers.AutoConfig.for_model(**given)
        return type(small_config).from_dict({**_inherited_fields(small_config, given), **given})
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"--large-config {path}: {_one_line(e)}") from e


def _inherited_fields(small_config, given: dict) -> dict:
    """The small config's fields that ``given`` lacks, minus those the class derives or defaults by itself.

    A field is dropped when building the config without it gives the same value (a default, or derived from other
    fields like ``head_dim = hidden_size // num_attention_heads``), so it is derived again from the large sizes.
    """
    import transformers

    base = small_config.to_dict()
    cls = type(small_config)
    keep = {}
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # trial configs may warn about odd combinations
    try:
        for k, v in base.items():
            if k in given:
                continue
            try:
                same = getattr(cls.from_dict({kk: vv for kk, vv in base.items() if kk != k}), k, object()) == v
            except Exception:  # noqa: BLE001 - a config that needs this field keeps it
                same = False
            if not same:
                keep[k] = v
    finally:
        transformers.logging.set_verbosity(verbosity)
    return keep


def data_files(paths: list[str]) -> list[Path]:
    """The files behind ``--data``: files as given, directories recursively (hidden entries skipped), sorted."""
    out: list[Path] = []
    for s in paths:
        p = Path(s)
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out.extend(
                sorted(
                    f
                    for f in p.rglob("*")
                    if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
                )
            )
        else:
            raise UserError(f"--data {s}: no such file or directory")
    if not out:
        raise UserError(f"--data {' '.join(paths)}: no files found")
    return out


def load_tokenizer(small_dir: str):
    """The small model's tokenizer when its directory holds one, else None (byte-level tokens)."""
    if not any((Path(small_dir) / f).is_file() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(small_dir)
    except (OSError, ValueError) as e:
        raise UserError(f"--small {small_dir}: cannot load its tokenizer ({_one_line(e)})") from e


def tokenize(files: list[Path], tokenizer, vocab_size: int) -> torch.Tensor:
    """One int64 stream (n,) of the files' tokens, files separated by EOS (tokenizer) or a newline byte."""
    parts: list[torch.Tensor] = []
    for f in files:
        if tokenizer is None:
            data = f.read_bytes()
            ids = torch.frombuffer(bytearray(data + b"\n"), dtype=torch.uint8).long() if data else None
        else:
            text = f.read_text(encoding="utf-8", errors="replace")
            ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
            sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
            if ids.numel() and sep is not None:
                ids = torch.cat([ids, torch.tensor([sep])])
        if ids is not None and ids.numel():
            parts.append(ids)
    if not parts:
        raise UserError("--data: the files are empty")
    stream = torch.cat(parts)
    top = int(stream.max())
    if top >= vocab_size:
        what = "byte-level tokens (no tokenizer in --small) need" if tokenizer is None else "the tokenizer needs"
        raise UserError(f"{what} token id {top}, but the model's vocab_size is {vocab_size}")
    return stream


def mask_token_id(tokenizer, config) -> int:
    if tokenizer is not None:
        if tokenizer.mask_token_id is None:
            raise UserError("the masked LM's tokenizer has no mask token")
        return int(tokenizer.mask_token_id)
    mid = getattr(config, "mask_token_id", None)
    return int(mid) if mid is not None else int(config.vocab_size) - 1


def make_batch(stream: torch.Tensor, step: int, seed: int, batch_size: int, seq_len: int, mask_id: int | None):
    """Batch number ``step``: a dict of model inputs, the same for the same (seed, step) whatever came before.

    ``mask_id`` None: causal (``labels = input_ids``); else a masked-LM batch (see the module doc).
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    if stream.numel() < seq_len + 1:
        stream = stream.repeat(math.ceil((seq_len + 1) / stream.numel()))
    starts = torch.randint(0, stream.numel() - seq_len + 1, (batch_size,), generator=g)
    ids = stream[starts[:, None] + torch.arange(seq_len)]
    if mask_id is None:
        return {"input_ids": ids, "labels": ids.clone()}
    masked = torch.rand(ids.shape, generator=g) < MASK_FRACTION
    if not masked.any():
        masked[0, int(torch.randint(0, seq_len, (1,), generator=g))] = True
    labels = torch.where(masked, ids, torch.full_like(ids, -100))
    return {"input_ids": torch.where(masked, torch.full_like(ids, mask_id), ids), "labels": labels}


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{what}: not valid JSON ({_one_line(e)})") from e


def _one_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    return lines[0] if lines else type(e).__name__


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"--device {name}: {_one_line(e)}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here")
    return dev


# ---------------------------------------------------------------------------------------------- checkpoints
def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint directory under ``out/checkpoint``, or None."""
    root = out / CKPT
    latest = root / LATEST
    if latest.is_file():
        d = root / latest.read_text().strip()
        if (d / TRAINER).is_file():
            return d
    done = sorted(
        d for d in root.glob("step-*") if d.is_dir() and not d.name.endswith(".tmp") and (d / TRAINER).is_file()
    )
    return done[-1] if done else None


def save_checkpoint(out: Path, model, optimizer, step: int, run: dict) -> Path:
    """Write ``out/checkpoint/step-<step>`` atomically, point ``latest`` at it, drop older ones."""
    root = out / CKPT
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    tmp, final = root / (name + ".tmp"), root / name
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_operator(tmp)
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "run": run}, tmp / TRAINER)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    ptr = root / (LATEST + ".tmp")
    ptr.write_text(name)
    os.replace(ptr, root / LATEST)
    for old in root.glob("step-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(d: Path, model, optimizer, run: dict) -> int:
    """Restore the operator and the optimizer from ``d``; return the step it ended. Refuses another run's."""
    from safetensors.torch import load_file

    from .serialization import WEIGHTS

    state = torch.load(d / TRAINER, map_location="cpu", weights_only=True)
    for k in RUN_KEYS:
        old, new = state["run"].get(k), run.get(k)
        if old != new:
            raise UserError(
                f"{d.parent.parent} holds a checkpoint of another run ({k}: {_short(old)} there, {_short(new)} now); "
                f"use another --out or delete {d.parent}"
            )
    model.load_state_dict(load_file(str(d / WEIGHTS), device=str(model.device)))
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def _short(v) -> str:
    s = json.dumps(v, sort_keys=True) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


# ---------------------------------------------------------------------------------------------- grow
class _Interrupt:
    """Defers Ctrl-C to the end of the current step (a second Ctrl-C raises KeyboardInterrupt at once)."""

    def __init__(self) -> None:
        self.requested = False
        self._old = None

    def __enter__(self) -> _Interrupt:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def cmd_grow(args) -> int:
    from tqdm.auto import tqdm

    import ligo_fast

    if args.steps < 1:
        raise UserError("--steps must be at least 1")
    if args.batch_size < 1 or args.seq_len < 2:
        raise UserError("--batch-size must be at least 1 and --seq-len at least 2")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {args.out}: exists and is not a directory")
    device = _device(args.device)
    dtype = getattr(torch, args.dtype)
    files = data_files(args.data)
    small, task = load_small(args.small, dtype)
    if task == "other":
        raise UserError(
            f"grow trains on text and needs a causal or masked LM (*ForCausalLM, *LMHeadModel, *ForMaskedLM); "
            f"{type(small).__name__} is neither: train its operator with the Python API (ligo_fast.grow)"
        )
    large_cfg = load_large_config(args.large_config, small.config)
    limit = getattr(large_cfg, "max_position_embeddings", None) or getattr(large_cfg, "n_positions", None)
    if limit is not None and args.seq_len > limit:
        raise UserError(f"--seq-len {args.seq_len} exceeds the large model's {limit} positions")
    tokenizer = load_tokenizer(args.small)
    stream = tokenize(files, tokenizer, int(large_cfg.vocab_size))
    mask_id = mask_token_id(tokenizer, large_cfg) if task == "masked" else None

    options = dict(
        depth_init=args.depth_init,
        width_init=args.width_init,
        tie=not args.no_tie,
        residual=args.residual,
        seed=args.seed,
    )
    try:
        model = ligo_fast.grow(small, large_cfg, **options)
    except ValueError as e:
        raise UserError(f"the large config does not fit the small model: {_one_line(e)}") from e
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    run = _run_record(args, files, large_cfg)
    changed = {k: (getattr(small.config, k, None), getattr(large_cfg, k)) for k in SIZE_KEYS if hasattr(large_cfg, k)}
    changed = {k: ab for k, ab in changed.items() if ab[0] != ab[1]}
    n_op = sum(p.numel() for p in params)
    sizes = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()) or "same sizes"
    print(
        f"growing {type(small).__name__} ({sizes}); "
        f"operator {n_op / 1e6:.2f}M trainable values; {stream.numel()} {'tokens' if tokenizer else 'bytes'} "
        f"from {len(files)} file(s); {task} LM loss on {device}"
    )

    step = 0
    ckpt = latest_checkpoint(out)
    if ckpt is not None:
        step = load_checkpoint(ckpt, model, optimizer, run)
        if step >= args.steps:
            print(f"{out} already holds {step} finished steps (--steps {args.steps}); writing the outputs again")
        else:
            print(f"resuming from step {step} of {args.steps} ({ckpt}); steps 1..{step} are kept")

    def checkpoint(at: int) -> Path:
        return save_checkpoint(out, model, optimizer, at, run)

    stop_at = args.steps if args.max_steps_this_run is None else min(args.steps, step + args.max_steps_this_run)
    loss_val = float("nan")
    bar = tqdm(
        total=args.steps, initial=step, desc="operator", unit="step", disable=args.no_progress, dynamic_ncols=True
    )
    updating = False
    try:
        with _Interrupt() as interrupt:
            while step < stop_at:
                n = step + 1
                batch = {
                    k: v.to(device)
                    for k, v in make_batch(stream, n, args.seed, args.batch_size, args.seq_len, mask_id).items()
                }
                torch.manual_seed(args.seed * 1_000_003 + n)  # dropout: the same masks when resumed
                optimizer.zero_grad(set_to_none=True)
                loss = model(**batch).loss
                loss.backward()
                if _STEP_HOOK is not None:
                    _STEP_HOOK(n)
                updating = True
                if args.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
                optimizer.step()
                updating = False
                step = n
                loss_val = float(loss.detach())
                bar.update(1)
                bar.set_postfix(loss=f"{loss_val:.4f}")
                if step % args.log_every == 0 or step == args.steps:
                    bar.write(f"step {step}/{args.steps}  loss {loss_val:.4f}")
                if step % args.save_every == 0 and step < stop_at:
                    checkpoint(step)
                if interrupt.requested:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        bar.close()
        if updating:  # the update may be half applied: keep the last periodic checkpoint
            last = latest_checkpoint(out)
            print(
                f"interrupted during the update of step {step + 1}; the checkpoint {last} is kept "
                f"(rerun the same command to resume)",
                file=sys.stderr,
            )
        else:
            where = checkpoint(step)
            print(
                f"interrupted after step {step} of {args.steps}; saved {where}; rerun the same command to resume",
                file=sys.stderr,
            )
        return EXIT_INTERRUPTED
    bar.close()
    checkpoint(step)
    if step < args.steps:
        print(f"stopped after step {step} of {args.steps} (--max-steps-this-run); rerun the same command to resume")
        return 0
    model.eval()
    _write_outputs(model, out, tokenizer)
    print(f"done: {step} steps, last loss {loss_val:.4f}; operator and {type(small).__name__} written to {out}")
    return 0


def _run_record(args, files: list[Path], large_cfg) -> dict:
    """The options of RUN_KEYS as this run has them (stored with each checkpoint, compared on resume)."""
    return {
        "small": str(Path(args.small).resolve()),
        "large_config": large_cfg.to_dict() | {"transformers_version": None},
        "data": [[str(f.resolve()), f.stat().st_size] for f in files],
        **{k: getattr(args, k) for k in ("lr", "batch_size", "seq_len", "seed", "depth_init", "width_init")},
        "tie": not args.no_tie,
        "residual": args.residual,
        "max_grad_norm": args.max_grad_norm,
        "dtype": args.dtype,
    }


def _write_outputs(model, out: Path, tokenizer) -> None:
    model.save_operator(out)
    large = model.materialize()
    large.save_pretrained(str(out))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))


# ---------------------------------------------------------------------------------------------- materialize
def cmd_materialize(args) -> int:
    from .checkpoint import load_operator

    op = Path(args.operator)
    if not op.exists():
        raise UserError(f"--operator {args.operator}: no such file or directory")
    small, _ = load_small(args.small, getattr(torch, args.dtype))
    large_cfg = load_large_config(args.large_config, small.config) if args.large_config else None
    try:
        model = load_operator(op, small, large_cfg)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise UserError(f"--operator {args.operator}: {_one_line(e)}") from e
    model.to(_device(args.device)).eval()
    tokenizer = load_tokenizer(args.small)
    large = model.materialize()
    large.save_pretrained(args.out)
    if tokenizer is not None:
        tokenizer.save_pretrained(args.out)
    n = sum(p.numel() for p in large.parameters())
    print(f"wrote {type(large).__name__} ({n / 1e6:.2f}M parameters) to {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------- info, bench
def info_text() -> str:
    """Versions, devices and the availability of every backend (with the reason when one is not)."""
    try:
        from .info import report  # the fuller report (extension details), when this build has it
    except ImportError:
        report = None
    import transformers

    if report is not None:
        text = report()
        return text if "transformers" in text else f"{text}\ntransformers {transformers.__version__}"

    import ligo_fast
    from ligo_fast import backends

    try:
        import triton

        tri = triton.__version__
    except Exception as e:  # noqa: BLE001 - any import failure is the answer
        tri = f"not importable ({type(e).__name__})"
    lines = [
        f"ligo_fast {ligo_fast.__version__}, python {platform.python_version()}",
        f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}), transformers {transformers.__version__}, "
        f"triton {tri}",
        f"CPU: {torch.get_num_threads()} threads, {platform.machine()}",
    ]
    if torch.cuda.is_available():
        lines += [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    else:
        lines.append("CUDA devices: none")
    lines.append("backends:")
    lines += [f"  {k:7s} {v}" for k, v in backends.availability().items()]
    return "\n".join(lines)


def cmd_info(args) -> int:
    print(info_text())
    return 0


def bench_shapes(quick: bool) -> list[tuple[str, int, int, int, int, int, int]]:
    """(name, L1, L2, o1, o2, i1, i2) of the block weights of BERT 6L/512H -> 12L/768H (or a 4x smaller model)."""
    L1, L2, h1, h2, f1, f2 = (2, 4, 128, 192, 512, 768) if quick else (6, 12, 512, 768, 2048, 3072)
    return [
        ("q/k/v/o (x4)", L1, L2, h1, h2, h1, h2),
        ("ffn in", L1, L2, f1, f2, h1, h2),
        ("ffn out", L1, L2, h1, h2, f1, f2),
    ]


def cmd_bench(args) -> int:
    from torch.utils import benchmark

    from . import backends, ops

    device = _device(args.device)
    avail = backends.availability()
    names = [b for b in backends.BACKENDS if avail[b] == "available"]
    if device.type == "cpu":
        names = [b for b in names if b != "triton"]  # the Triton interpreter is no benchmark
    g = torch.Generator().manual_seed(0)
    shape = "BERT 2L/128H -> 4L/192H" if args.quick else "BERT 6L/512H -> 12L/768H"
    print(f"ligo_expand forward, {shape}, float32 on {device}; median ms (20%-80%)")
    print(f"  {'module':14s}" + "".join(f"{b:>24s}" for b in names))
    totals = dict.fromkeys(names, 0.0)
    for name, L1, L2, o1, o2, i1, i2 in bench_shapes(args.quick):
        W = torch.randn(L1, o1, i1, generator=g).to(device)
        depth = torch.rand(L2, L1, generator=g).to(device)
        E_out = torch.rand(L2, o2 - o1, o1, generator=g).to(device)
        E_in = torch.rand(L2, i2 - i1, i1, generator=g).to(device)
        row = f"  {name:14s}"
        for b in names:
            t = benchmark.Timer(
                "ops.ligo_expand(W, depth, E_out, E_in, backend=b)",
                globals=dict(ops=ops, W=W, depth=depth, E_out=E_out, E_in=E_in, b=b),
            ).blocked_autorange(min_run_time=args.min_time)
            q = sorted(t.times)
            lo, hi = q[int(0.2 * (len(q) - 1))], q[int(0.8 * (len(q) - 1))]
            totals[b] += t.median * (4 if name.endswith("(x4)") else 1)
            row += f"{t.median * 1e3:.2f} ({lo * 1e3:.2f}-{hi * 1e3:.2f})".rjust(24)
        print(row)
    print(f"  {'block weights':14s}" + "".join(f"{totals[b] * 1e3:>24.2f}" for b in names))
    print("full comparison (official eager code, torch.compile, backward): benchmarks/bench_expand.py")
    return 0


# ---------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from .config import DEPTH_INITS, WIDTH_INITS

    ap = argparse.ArgumentParser(
        prog=PROG, description="LiGO growth operators: grow a pretrained model, materialise it, inspect backends."
    )
    ap.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    ap.add_argument("-v", "--verbose", action="store_true", help="log at INFO level (transformers warnings too)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser(
        "grow",
        help="train a LiGO operator from a small model, write it and the large model",
        description="Train the LiGO operator on text, then write the operator and the materialised "
        "large HF model into --out. Rerunning the same command resumes from --out/checkpoint.",
    )
    g.add_argument("--small", required=True, help="local HF directory of the small model (config.json + weights)")
    g.add_argument("--large-config", required=True, help="JSON of the large config (fields not given: the small's)")
    g.add_argument("--data", required=True, nargs="+", metavar="PATH", help="text files or directories")
    g.add_argument("--out", required=True, help="output directory (also holds the resumable checkpoint)")
    g.add_argument("--steps", type=int, default=100, help="operator training steps (default 100)")
    g.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate, constant (default 1e-3)")
    g.add_argument("--batch-size", type=int, default=8, help="sequences per step (default 8)")
    g.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    g.add_argument("--seed", type=int, default=0, help="seed of the operator's init, the batches and dropout")
    g.add_argument(
        "--depth-init",
        default="stackbert_noisy",
        choices=DEPTH_INITS,
        metavar="SCHEME",
        help=f"depth initialisation: {', '.join(DEPTH_INITS)} (default stackbert_noisy)",
    )
    g.add_argument(
        "--width-init",
        default="rand",
        choices=WIDTH_INITS,
        metavar="SCHEME",
        help=f"width initialisation: {', '.join(WIDTH_INITS)} (default rand)",
    )
    g.add_argument("--no-tie", action="store_true", help="every module gets its own width matrices")
    g.add_argument("--residual", action="store_true", help="add a trainable residual to every produced tensor")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: off; default 1.0)")
    g.add_argument("--log-every", type=_positive, default=10, help="print the loss every N steps (default 10)")
    g.add_argument("--save-every", type=_positive, default=10, help="checkpoint every N steps (default 10)")
    _common(g)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--max-steps-this-run", type=_positive, default=None, help=argparse.SUPPRESS)
    g.set_defaults(func=cmd_grow)

    m = sub.add_parser(
        "materialize",
        help="write the large HF model of a saved operator",
        description="Load a saved operator (ligo-fast grow --out, or save_operator) and write the "
        "materialised large HF model (safetensors).",
    )
    m.add_argument("--small", required=True, help="local HF directory of the small model the operator grows")
    m.add_argument("--operator", required=True, help="directory (or .safetensors/.bin file) of the operator")
    m.add_argument("--large-config", default=None, help="JSON of the large config (default: the operator's)")
    m.add_argument("--out", required=True, help="output directory of the HF model")
    _common(m)
    m.set_defaults(func=cmd_materialize)

    i = sub.add_parser("info", help="versions, devices, backends (with the reason when one is unavailable)")
    i.set_defaults(func=cmd_info)

    b = sub.add_parser("bench", help="quick timing of ligo_expand on BERT 6L/512H -> 12L/768H shapes")
    b.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    b.add_argument("--quick", action="store_true", help="4x smaller shapes")
    b.add_argument("--min-time", type=float, default=0.2, help="seconds of timing per case (default 0.2)")
    b.set_defaults(func=cmd_bench)
    return ap


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda when available)")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="dtype of the small weights and the operator (default float32)",
    )


def _positive(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse's own usage errors raise SystemExit(2))."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if not args.verbose:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars of every from_pretrained
    try:
        return args.func(args)
    except UserError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # outside the training loop (which saves a checkpoint first)
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
