"""What the ``ligo-fast`` commands do: ``grow``, ``materialize``, ``info``, ``bench``.

:mod:`.cli` parses the command line and imports this module only then (it imports torch and transformers), so
``--help``, ``--version`` and argument errors answer at once. The inputs are read and checked by :mod:`.inputs`,
the training run is :mod:`.training` (checkpoints: :mod:`.checkpoints`), the output directory (lock, manifest)
:mod:`.outputs`; failures are the exceptions of :mod:`.errors`. Imports those and ligo_fast's public API
(``grow``, ``load_operator``, ``backends``, ``ops``, ``info``, ``serialization``'s byte formatting) and
``memory.memory_budget`` (the reading of a fresh run's memory budget).
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from torch.utils import benchmark

import ligo_fast
from ligo_fast import backends, budget, guard, ops
from ligo_fast.info import report
from ligo_fast.serialization import parse_bytes

from . import checkpoints, data, inputs, outputs, training
from .errors import Diverged, UserError, exit_code_for
from .inputs import describe

PROG = "ligo-fast"
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
EVAL_WINDOWS = 8  # fixed windows of the data on which the small and the grown model are compared (ligo_fast.guard)


def quiet_transformers(verbose: bool) -> None:
    """Unless ``verbose``: transformers logs errors only and draws no progress bars (every from_pretrained)."""
    if not verbose:
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"--device {name}: {describe(e)}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here")
    return dev


# ---------------------------------------------------------------------------------------------- grow
@dataclass(frozen=True)
class Schedule:
    """Steps and learning rate of the operator training: linear warm-up over ``warmup`` steps, then ``lr``."""

    steps: int
    lr: float
    warmup: int


def schedule(args, preserved_width: int | None = None, widens: bool = True) -> Schedule:
    """The operator-training schedule of ``grow``'s options: :func:`ligo_fast.budget.operator_budget`'s rule.

    ``--steps`` defaults to the rule's steps for ``--large-steps`` (5% of them within [10, 100]), or to its cap, the
    paper's 100 steps (what the rule gives any large budget of 2000 steps or more), when the large budget is not
    given; 0 (no operator training: the start is written as it is) for a depth-only growth from a
    function-preserving start (``widens`` False: ``LiGOModel.widens``); ``--lr`` to the rule's learning rate from
    ``--large-lr`` and ``preserved_width`` (the grown model's ``LiGOModel.preserved_width``); ``--warmup`` to the
    rule's tenth of the steps. Everything downstream takes the :class:`Schedule`.
    """
    steps, large = args.steps, args.large_steps
    if large is None:  # the large budget at which the rule reaches its cap (the rule's steps, or an explicit --steps)
        large = steps or round(budget.MAX_OPERATOR_STEPS / budget.OPERATOR_FRACTION)
    b = budget.operator_budget(large, args.large_lr, steps=steps, preserved_width=preserved_width, widens=widens)
    warmup = args.warmup if args.warmup is not None else b.warmup
    lr = args.lr if args.lr is not None else b.lr
    return Schedule(b.steps, lr, warmup if warmup > 1 else 0)  # a 1-step warm-up starts at lr: none


def _check_grow_args(args) -> None:
    if args.steps is not None and args.steps < 1:
        raise UserError("--steps must be at least 1")
    if args.large_steps is not None and args.large_steps < 1:
        raise UserError("--large-steps must be at least 1")
    if args.batch_size < 1 or args.seq_len < 2:
        raise UserError("--batch-size must be at least 1 and --seq-len at least 2")
    for flag, v in (("--lr", args.lr), ("--large-lr", args.large_lr)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise UserError(f"{flag} must be a finite number > 0, got {v}")
    if not (math.isfinite(args.max_grad_norm) and args.max_grad_norm >= 0):
        raise UserError(f"--max-grad-norm must be a finite number >= 0, got {args.max_grad_norm}")
    if args.warmup is not None and args.warmup < 0:
        raise UserError(f"--warmup must be at least 0, got {args.warmup}")


def cmd_grow(args) -> int:
    _check_grow_args(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {args.out}: exists and is not a directory")
    _check_apart(out, args.data)
    device = _device(args.device)
    dtype = getattr(torch, args.dtype)
    files = inputs.text_files(args.data)
    small, task = inputs.load_small(args.small, dtype)
    if task == "other":
        raise UserError(
            f"grow trains on text and needs a causal or masked LM (*ForCausalLM, *LMHeadModel, *ForMaskedLM); "
            f"{type(small).__name__} is neither: train its operator with the Python API (ligo_fast.grow)"
        )
    large_cfg = inputs.load_large_config(args.large_config, small.config)
    limit = getattr(large_cfg, "max_position_embeddings", None) or getattr(large_cfg, "n_positions", None)
    if limit is not None and args.seq_len > limit:
        raise UserError(f"--seq-len {args.seq_len} exceeds the large model's {limit} positions")
    tokenizer = inputs.load_tokenizer(args.small)
    try:
        stream = data.encode_files(files, tokenizer)
        mask_id = data.mask_token_id(tokenizer, large_cfg) if task == "masked" else None
    except data.DataError as e:
        raise UserError(f"--data: {e}") from e
    inputs.check_vocab(stream, tokenizer, int(large_cfg.vocab_size))
    mem = run_budget(args, out, device)
    options = dict(
        depth_init=args.depth_init,
        width_init=args.width_init,
        tie=not args.no_tie,
        residual=args.residual,
        seed=args.seed,
        memory_budget=mem.bytes,
    )
    try:
        model = ligo_fast.grow(small, large_cfg, **options)
    except ValueError as e:
        raise UserError(f"cannot grow {type(small).__name__} into the large config: {describe(e)}") from e
    sched = schedule(args, model.preserved_width, model.widens)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=sched.lr, weight_decay=0.0)
    run = run_record(args, files, large_cfg, sched, mem)
    changed = {k: (getattr(small.config, k, None), getattr(large_cfg, k)) for k in SIZE_KEYS if hasattr(large_cfg, k)}
    changed = {k: ab for k, ab in changed.items() if ab[0] != ab[1]}
    n_op = sum(p.numel() for p in params)
    sizes = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()) or "same sizes"
    print(
        f"growing {type(small).__name__} ({sizes}); "
        f"operator {n_op / 1e6:.2f}M trainable values; {stream.numel()} {'tokens' if tokenizer else 'bytes'} "
        f"from {len(files)} file(s); {task} LM loss on {device}"
    )
    if sched.steps == 0:  # only the rule gives 0 (--steps is at least 1)
        print(
            "0 operator steps: the budget rule trains no operator for a depth-only growth from a function-preserving "
            "start (ligo_fast.budget); the start is written as it is (--steps N trains one)"
        )

    bos = data.bos_of(tokenizer) if task == "causal" else None  # Gemma/Llama tokenizers: every window starts with BOS

    batch_at, eval_batch = data.text_batches(
        stream, args.seed, args.batch_size, args.seq_len, EVAL_WINDOWS, mask_id, bos
    )

    def start() -> torch.nn.Module:  # the operator's start again (deterministic: same inputs, same seed)
        return ligo_fast.grow(small, large_cfg, **options).to(device)

    with _locked(out):
        job = _Job(args, model, optimizer, run, small, tokenizer, batch_at, sched, eval_batch, start)
        return _grow_into(out, job)


@torch.no_grad()
def eval_loss(model, batch: dict, device: torch.device) -> float:
    """The loss of ``model`` (in eval mode for the call) on ``batch``, one window at a time."""
    was = model.training
    model.eval()
    try:
        n = batch["input_ids"].shape[0]
        losses = [float(model(**{k: v[i : i + 1].to(device) for k, v in batch.items()}).loss) for i in range(n)]
    finally:
        model.train(was)
    return sum(losses) / n


def _check_apart(out: Path, data_paths: list[str]) -> None:
    """Refuse an ``--out`` inside a ``--data`` directory (the run's own files would join its data, and every rerun
    would see other data) and ``--data`` inside ``--out``."""
    o = out.resolve()
    for s in data_paths:
        d = Path(s).resolve()
        if o == d or d in o.parents:
            raise UserError(
                f"--out {out} is inside --data {s}: the run's own files would become training data; "
                f"use an --out outside it"
            )
        if o in d.parents:
            raise UserError(f"--data {s} is inside --out {out}: keep the data outside the output directory")


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """The lock of ``out`` (:func:`outputs.locked`); a busy or unusable directory is a :class:`UserError`."""
    with ExitStack() as stack:
        try:
            stack.enter_context(outputs.locked(out))
        except outputs.OutputsError as e:
            raise UserError(str(e)) from e
        except OSError as e:
            raise UserError(f"--out {out}: {describe(e)}") from e
        yield


@dataclass(frozen=True)
class Budget:
    """The memory budget of a ``grow`` run: ``bytes`` every memory decision is made with (memory-lean or eager, its
    chunk, hence the factored forms and their roundings) and ``source``, where the number came from."""

    bytes: int
    source: str


def run_budget(args, out: Path, device: torch.device) -> Budget:
    """The memory budget of this run, decided once before the model is built: ``--memory-budget`` when given; else,
    when the run resumes (no ``--restart``), the budget recorded in its newest checkpoint
    (:func:`checkpoints.recorded_budget`), so the resumed part decides as the first part did however busy the machine
    is now; else ``ligo_fast.memory.memory_budget`` of ``device`` (``LIGO_FAST_MEMORY_BUDGET``, else the memory
    free now). It reaches the model as ``LiGOConfig.memory_budget`` and is recorded in the run record (field
    ``memory_budget``, of every checkpoint and of the manifest), where a resumed run finds it."""
    if args.memory_budget is not None:
        try:
            return Budget(parse_bytes(args.memory_budget, "--memory-budget"), "--memory-budget")
        except ValueError as e:
            raise UserError(str(e)) from e
    try:
        found = None if args.restart or checkpoints.root_problem(out) else checkpoints.recorded_budget(out)
    except checkpoints.NewerFormat as e:
        raise UserError(str(e)) from e
    if found is not None:
        return Budget(found[0], f"recorded in {found[1].name}")
    try:
        n, source = ligo_fast.memory_budget(device)
    except ValueError as e:  # a bad LIGO_FAST_MEMORY_BUDGET
        raise UserError(describe(e)) from e
    return Budget(n, source)


@dataclass(frozen=True)
class _Job:
    """What ``grow`` prepared before taking the lock of ``--out``: the parsed arguments, the grown model and its
    optimizer, the run record, the small model, its tokenizer, the batches, the schedule, the evaluation batch and
    how to build the operator's start again (``--select best``)."""

    args: argparse.Namespace
    model: object
    optimizer: torch.optim.Optimizer
    run: dict
    small: torch.nn.Module
    tokenizer: object
    batch_at: Callable[[int], dict]
    sched: Schedule
    eval_batch: dict
    start: Callable[[], torch.nn.Module]


def _grow_into(out: Path, job: _Job) -> int:
    """The part of ``grow`` that reads and writes ``out`` (under its lock)."""
    args, model, optimizer, run, small, sched = job.args, job.model, job.optimizer, job.run, job.small, job.sched
    problem = checkpoints.root_problem(out)
    if problem is not None:
        raise UserError(f"{problem}; make it a directory or a link to one")
    checkpoints.clean(out)
    try:
        manifest = outputs.read_manifest(out)
    except outputs.OutputsError as e:
        raise UserError(str(e)) from e
    if args.restart:
        return _restart(out, job, manifest)
    try:
        step, ckpt = training.resume(out, model, optimizer, run, small)
    except checkpoints.NoUsableCheckpoint as e:
        raise UserError(f"{e}; not starting over from step 0 silently: --restart does that on purpose") from e
    except (checkpoints.RunMismatch, checkpoints.NewerFormat) as e:
        raise UserError(str(e)) from e
    if ckpt is None:
        if manifest is not None:
            return _finished(out, args, run, manifest, sched)
        present = outputs.output_files(out)
        if present:
            raise UserError(
                f"{out} holds {', '.join(present)} but no run record of ligo-fast ({outputs.MANIFEST}) and no "
                f"checkpoint: another program's or an older version's files; use another --out or delete them"
            )
    elif step >= sched.steps:
        if (
            manifest is not None
            and manifest.get("step") == step
            and not checkpoints.run_differences(manifest.get("run", {}), run)
        ):
            return _finished(out, args, run, manifest, sched)
        print(f"{out} already holds {step} finished steps (--steps {sched.steps}); writing the outputs again")
    else:
        print(f"resuming from step {step} of {sched.steps} ({ckpt}); steps 1..{step} are kept")
    return _train(out, job, step, ckpt)


def _restart(out: Path, job: _Job, manifest) -> int:
    """``--restart``: the checkpoints of ``out`` are removed and the run starts from step 0 (the previous outputs
    stay until the new ones replace them; another program's files are still refused)."""
    if manifest is None and outputs.output_files(out) and not outputs.interrupted(out):
        raise UserError(
            f"{out} holds {', '.join(outputs.output_files(out))} of another program; use another --out or delete them"
        )
    if manifest is not None and manifest.get("command") != "grow":
        raise UserError(f"{out} holds the outputs of a {manifest.get('command')} command; use another --out")
    n = len(checkpoints.checkpoints(out))
    checkpoints.remove_checkpoints(out)
    print(f"--restart: starting over from step 0 of {job.sched.steps} ({n} checkpoint(s) removed)")
    return _train(out, job, 0, None)


def _train(out: Path, job: _Job, step: int, ckpt) -> int:
    """Train from ``step`` (restored from checkpoint ``ckpt``, or the initial state) and write the outputs."""
    args, model, optimizer, run, sched = job.args, job.model, job.optimizer, job.run, job.sched
    tokenizer, batch_at, eval_batch = job.tokenizer, job.batch_at, job.eval_batch
    stop_at = sched.steps if args.max_steps_this_run is None else min(sched.steps, step + args.max_steps_this_run)
    device = model.device
    small_loss = eval_loss(job.small.to(device), eval_batch, device)
    start_loss = eval_loss(model, eval_batch, device) if step == 0 else None
    if start_loss is not None:
        print(
            f"evaluation loss ({EVAL_WINDOWS} windows of the data): small model {small_loss:.4f}, "
            f"grown {start_loss:.4f}"
        )
    rise = guard.RiseGuard(lr=sched.lr)

    def watch(n: int, loss: float) -> None:
        msg = rise.update(n, loss) if step == 0 else None  # a resumed run has no start to compare with
        if msg:
            print(f"{PROG} grow: warning: {msg}", file=sys.stderr)

    end = training.train_operator(
        model,
        optimizer,
        batch_at,
        out=out,
        run=run,
        start=step,
        steps=sched.steps,
        stop_at=stop_at,
        seed=args.seed,
        max_grad_norm=args.max_grad_norm,
        log_every=args.log_every,
        save_every=args.save_every,
        lr_at=training.warmup_lr(sched.lr, sched.warmup),
        saved=ckpt,
        progress=not args.no_progress,
        keep=_keep(args),
        on_loss=watch,
    )
    kept = f"the checkpoint {end.checkpoint} is kept" if end.checkpoint else "no checkpoint was written"
    if end.status == "diverged":
        raise Diverged(f"operator training diverged: {end.reason}; {kept}; try a lower --lr")
    if end.status == "interrupted_in_update":  # the update may be half applied: the last periodic checkpoint
        print(
            f"interrupted during the update of step {end.step + 1}; {kept} (rerun the same command to resume)",
            file=sys.stderr,
        )
        return exit_code_for(end.signum)
    if end.status == "interrupted":
        print(
            f"interrupted after step {end.step} of {sched.steps}; saved {end.checkpoint}; "
            f"rerun the same command to resume",
            file=sys.stderr,
        )
        return exit_code_for(end.signum)
    if end.status == "stopped":
        print(
            f"stopped after step {end.step} of {sched.steps} (--max-steps-this-run); rerun the same command to resume"
        )
        return 0
    trained_loss = eval_loss(model, eval_batch, device)
    start_loss, selected = _select(job, small_loss, start_loss, trained_loss)
    grown_loss = start_loss if selected == "start" else trained_loss
    worse = guard.worse_than_small(small_loss, grown_loss)
    evaluation = {"windows": EVAL_WINDOWS, "small": small_loss, "grown": grown_loss, "worse_than_small": bool(worse)}
    evaluation.update(trained=trained_loss, selected=selected)
    if start_loss is not None:
        evaluation["grown_start"] = start_loss
    model.eval()
    write_outputs(out, model, tokenizer, {"command": "grow", "step": end.step, "run": run, "eval": evaluation})
    if args.keep_checkpoints is None:
        checkpoints.remove_checkpoints(out, upto=end.step)
    last = f"last loss {end.loss:.4f}" if math.isfinite(end.loss) else "no step trained in this call"
    print(
        f"done: {end.step} steps, {last}; evaluation loss {grown_loss:.4f} (small model {small_loss:.4f}); "
        f"operator and {model.hf_class.__name__} written to {out}"
    )
    if worse:
        print(f"{PROG} grow: WARNING: {worse} (recorded in {outputs.MANIFEST}: eval.worse_than_small)", file=sys.stderr)
    return 0


def _select(job: _Job, small_loss: float, start_loss: float | None, trained_loss: float) -> tuple[float | None, str]:
    """``--select``: ``(start_loss, "start")`` after putting the operator's start back into ``job.model`` when the
    start evaluates lower than the trained operator (``best``), else ``(start_loss, "last")``. A resumed run has
    not evaluated its start: it is evaluated only when the trained operator is worse than the small model."""
    if job.args.select != "best" or job.sched.steps == 0:
        return start_loss, "last"
    if start_loss is None and not guard.worse_than_small(small_loss, trained_loss):
        return None, "last"
    device = job.model.device
    start = job.start()
    if start_loss is None:
        start_loss = eval_loss(start, job.eval_batch, device)
    if not (math.isfinite(start_loss) and (start_loss < trained_loss or not math.isfinite(trained_loss))):
        return start_loss, "last"
    with torch.no_grad():
        initial = dict(start.named_parameters())
        for name, p in job.model.named_parameters():
            p.copy_(initial[name])
    print(
        f"{PROG} grow: the trained operator evaluates worse than its start (loss {trained_loss:.4f} against "
        f"{start_loss:.4f}): writing the start (--select best; --select last writes the trained one)",
        file=sys.stderr,
    )
    return start_loss, "start"


def _finished(out: Path, args, run: dict, manifest: dict, sched: Schedule) -> int:
    """``out`` holds the complete outputs of a run and no newer checkpoint: nothing to do, or a clear refusal."""
    diffs = checkpoints.run_differences(manifest.get("run", {}), run)
    if diffs:
        raise UserError(
            f"{out} holds the outputs of another run ({'; '.join(diffs[:3])}); use another --out, "
            f"or --restart to start over"
        )
    try:
        outputs.check_outputs(out)
    except outputs.OutputsError as e:
        raise UserError(f"{e}; its checkpoint is gone, so write into another --out") from e
    outputs.clean(out)  # a staging directory left by a kill after the manifest was written
    done = manifest.get("step")
    if not isinstance(done, int) or done < sched.steps:
        raise UserError(
            f"{out} holds this run's outputs after {done} steps but not its checkpoint (removed after a finished "
            f"run unless --keep-checkpoints), so it cannot continue to {sched.steps} steps; use another --out"
        )
    if args.keep_checkpoints is None:
        checkpoints.remove_checkpoints(out, upto=done)
    print(f"{out} already holds the outputs of this run ({done} steps); nothing to do")
    return 0


def _keep(args) -> int:
    """The checkpoints a run keeps: ``--keep-checkpoints N``, or the default (also for the option without N)."""
    return args.keep_checkpoints or checkpoints.KEEP


def small_files(small_dir: str) -> list[Path]:
    """The files of the small model's directory its digest covers: every regular file at its top (config, weights,
    tokenizer), hidden files and Markdown (a model card) aside."""
    d = Path(small_dir)
    return sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix != ".md")


def run_record(args, files: list[Path], large_cfg, sched: Schedule, mem: Budget) -> dict:
    """The options and inputs that change the numbers of a run (stored with each checkpoint and in the outputs'
    manifest; a resumed run must repeat them). Paths are resolved; the large config without ``_name_or_path`` (the
    small directory as typed); the content of the data files and of the small model's files by sha256 (computed
    once per command), so a changed input is refused by name even at the same path and size. The memory budget
    ``mem`` is recorded too but not compared (:func:`run_budget`: a resumed run reuses it unless told another)."""
    cfg = {k: v for k, v in large_cfg.to_dict().items() if k != "_name_or_path"}
    return {
        "small": str(Path(args.small).resolve()),
        "small_sha256": {p.name: outputs.file_sha256(p) for p in small_files(args.small)},
        "large_config": cfg | {"transformers_version": None},
        "data": [[str(f.resolve()), f.stat().st_size] for f in files],
        "data_sha256": {str(f.resolve()): outputs.file_sha256(f) for f in files},
        "lr": sched.lr,
        "warmup": sched.warmup,
        **{k: getattr(args, k) for k in ("batch_size", "seq_len", "seed", "depth_init", "width_init")},
        "tie": not args.no_tie,
        "residual": args.residual,
        "max_grad_norm": args.max_grad_norm,
        "dtype": args.dtype,
        checkpoints.BUDGET: {"bytes": mem.bytes, "source": mem.source},
    }


def write_outputs(out: Path, model, tokenizer, record: dict, max_shard_size: str | None = None) -> None:
    """The operator, the materialised large model and the tokenizer (if any) into ``out``, crash-consistently
    (:func:`outputs.write_outputs`). The large model is streamed to its safetensors files module kind by module kind
    (``LiGOModel.save_materialized``): it is never held whole in memory."""

    def write(d: Path) -> None:
        model.save_operator(d)
        model.save_materialized(d, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(d))

    elem = next(model.parameters()).element_size()
    own = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])  # the operator file's
    nbytes = own + model.num_parameters() * elem  # (no state_dict(): it would copy the operator)
    outputs.write_outputs(out, write, record, nbytes=nbytes)


# ---------------------------------------------------------------------------------------------- materialize
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
_MMAP_THRESHOLD = 1 << 20


def hand_back_freed_memory() -> bool:
    """Make this process hand freed tensors of 1 MiB or more back to the system at once (glibc; False elsewhere).

    The streamed load and save allocate and free tensors of 1-100 MB one after the other. glibc serves a block of
    at least its mmap threshold with its own mapping, unmapped when freed, but raises that threshold (up to 32 MiB)
    each time such a block is freed, so later blocks of that size come from the heap, where freed memory stays
    resident. A fixed threshold (setting one turns the adjustment off, mallopt(3)) keeps the resident set at what
    is alive. The process is this command's, so the setting is ours to choose; the library never makes it."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


def cmd_materialize(args) -> int:
    hand_back_freed_memory()
    op = Path(args.operator)
    if not op.exists():
        raise UserError(f"--operator {args.operator}: no such file or directory")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {args.out}: exists and is not a directory")
    if op.is_dir() and out.exists() and os.path.samefile(op, out):
        raise UserError("--out must be another directory than --operator")
    try:
        parse_bytes(args.max_shard_size, "--max-shard-size")
    except ValueError as e:
        raise UserError(f"--max-shard-size: {e}") from e
    if op.is_dir():
        try:
            outputs.check_outputs(op, interrupted_hint="rerun the grow command that writes them")
        except outputs.OutputsError as e:
            raise UserError(f"--operator {e}") from e
    small, _ = inputs.load_small(args.small, getattr(torch, args.dtype))
    large_cfg = inputs.load_large_config(args.large_config, small.config) if args.large_config else None
    try:
        model = ligo_fast.load_operator(op, small, large_cfg)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"--operator {args.operator}: {describe(e)}") from e
    model.to(_device(args.device)).eval()
    with _locked(out):
        try:
            manifest = outputs.read_manifest(out)
        except outputs.OutputsError as e:
            raise UserError(str(e)) from e
        if manifest is not None and manifest.get("command") != "materialize":
            raise UserError(f"--out {out} holds the outputs of a {manifest.get('command')} run; use another directory")
        present = outputs.output_files(out)
        ours = outputs.interrupted(out) and not (out / checkpoints.CKPT).exists()  # a materialize cut short
        if manifest is None and present and not ours:
            raise UserError(f"--out {out} holds {', '.join(present)} of another program; use another directory")
        record = {"command": "materialize", "operator": str(op.resolve()), "small": str(Path(args.small).resolve())}
        write_outputs(out, model, inputs.load_tokenizer(args.small), record, args.max_shard_size)
    print(f"wrote {model.hf_class.__name__} ({model.num_parameters() / 1e6:.2f}M parameters) to {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------- info, bench
def cmd_info(args) -> int:
    """Versions, devices and the availability of every backend (``ligo_fast.info.report``), plus transformers'."""
    print(f"{report()}\ntransformers {transformers.__version__}")
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
