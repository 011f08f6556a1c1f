"""The ``ligo-fast`` command line (also ``python -m ligo_fast.apps.cli``): argument parsing and the commands.

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

The data layer is :mod:`.data`, the training run :mod:`.training`; this module imports those and ligo_fast's public
API (``grow``, ``load_operator``, ``supported_classes``, ``backends``, ``ops``, ``info``, ``config``'s scheme names).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
import transformers
from torch.utils import benchmark

import ligo_fast
from ligo_fast import backends, ops
from ligo_fast.config import DEPTH_INITS, WIDTH_INITS
from ligo_fast.info import report

from . import data, training
from .checkpoints import RunMismatch
from .progress import console_logging

PROG = "ligo-fast"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
MASKED_SUFFIXES = ("ForMaskedLM",)
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


class UserError(Exception):
    """A mistake in the command line or its inputs: reported as one line, exit code 2."""


# ---------------------------------------------------------------------------------------------- inputs
def load_small(path: str, dtype: torch.dtype = torch.float32):
    """(model, task) from a local HF directory; task is ``causal``, ``masked`` or ``other``."""
    d = Path(path)
    if not d.is_dir():
        raise UserError(f"--small {path}: no such directory")
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


def load_tokenizer(small_dir: str):
    """The small model's tokenizer when its directory holds one, else None (byte-level tokens)."""
    if not any((Path(small_dir) / f).is_file() for f in TOKENIZER_FILES):
        return None
    try:
        return transformers.AutoTokenizer.from_pretrained(small_dir)
    except (OSError, ValueError) as e:
        raise UserError(f"--small {small_dir}: cannot load its tokenizer ({_one_line(e)})") from e


def check_vocab(stream: torch.Tensor, tokenizer, vocab_size: int) -> None:
    """A user error when the token stream holds an id the model's vocabulary lacks."""
    top = int(stream.max())
    if top >= vocab_size:
        what = "byte-level tokens (no tokenizer in --small) need" if tokenizer is None else "the tokenizer needs"
        raise UserError(f"{what} token id {top}, but the model's vocab_size is {vocab_size}")


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


# ---------------------------------------------------------------------------------------------- grow
def cmd_grow(args) -> int:
    if args.steps < 1:
        raise UserError("--steps must be at least 1")
    if args.batch_size < 1 or args.seq_len < 2:
        raise UserError("--batch-size must be at least 1 and --seq-len at least 2")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {args.out}: exists and is not a directory")
    device = _device(args.device)
    dtype = getattr(torch, args.dtype)
    try:
        files = data.collect_files(args.data)
    except (FileNotFoundError, data.DataError) as e:
        raise UserError(f"--data {e}") from e
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
    try:
        stream = data.encode_files(files, tokenizer)
        mask_id = data.mask_token_id(tokenizer, large_cfg) if task == "masked" else None
    except data.DataError as e:
        raise UserError(f"--data: {e}") from e
    check_vocab(stream, tokenizer, int(large_cfg.vocab_size))

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

    try:
        step, ckpt = training.resume(out, model, optimizer, run, small)
    except RunMismatch as e:
        raise UserError(str(e)) from e
    if ckpt is not None:
        if step >= args.steps:
            print(f"{out} already holds {step} finished steps (--steps {args.steps}); writing the outputs again")
        else:
            print(f"resuming from step {step} of {args.steps} ({ckpt}); steps 1..{step} are kept")

    def batch_at(k: int) -> dict:
        return data.make_batch(stream, k, args.seed, args.batch_size, args.seq_len, mask_id)

    stop_at = args.steps if args.max_steps_this_run is None else min(args.steps, step + args.max_steps_this_run)
    end = training.train_operator(
        model,
        optimizer,
        batch_at,
        out=out,
        run=run,
        start=step,
        steps=args.steps,
        stop_at=stop_at,
        seed=args.seed,
        max_grad_norm=args.max_grad_norm,
        log_every=args.log_every,
        save_every=args.save_every,
        progress=not args.no_progress,
    )
    if end.status == "interrupted_in_update":  # the update may be half applied: the last periodic checkpoint
        print(
            f"interrupted during the update of step {end.step + 1}; the checkpoint {end.checkpoint} is kept "
            f"(rerun the same command to resume)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if end.status == "interrupted":
        print(
            f"interrupted after step {end.step} of {args.steps}; saved {end.checkpoint}; "
            f"rerun the same command to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if end.status == "stopped":
        print(f"stopped after step {end.step} of {args.steps} (--max-steps-this-run); rerun the same command to resume")
        return 0
    model.eval()
    model.save_operator(out)
    _write_large(model, out, tokenizer)
    print(f"done: {end.step} steps, last loss {end.loss:.4f}; operator and {type(small).__name__} written to {out}")
    return 0


def _run_record(args, files: list[Path], large_cfg) -> dict:
    """The options that change the numbers of a run (stored with each checkpoint; a resumed run must repeat them)."""
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


def _write_large(model, out: Path | str, tokenizer):
    """Materialise ``model`` and save the large HF model (and ``tokenizer``, if any) into ``out``; returns it."""
    large = model.materialize()
    large.save_pretrained(str(out))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return large


# ---------------------------------------------------------------------------------------------- materialize
def cmd_materialize(args) -> int:
    op = Path(args.operator)
    if not op.exists():
        raise UserError(f"--operator {args.operator}: no such file or directory")
    small, _ = load_small(args.small, getattr(torch, args.dtype))
    large_cfg = load_large_config(args.large_config, small.config) if args.large_config else None
    try:
        model = ligo_fast.load_operator(op, small, large_cfg)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise UserError(f"--operator {args.operator}: {_one_line(e)}") from e
    model.to(_device(args.device)).eval()
    large = _write_large(model, args.out, load_tokenizer(args.small))
    n = sum(p.numel() for p in large.parameters())
    print(f"wrote {type(large).__name__} ({n / 1e6:.2f}M parameters) to {args.out}")
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


# ---------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG, description="LiGO growth operators: grow a pretrained model, materialise it, inspect backends."
    )
    ap.add_argument("--version", action="version", version=f"%(prog)s {ligo_fast.__version__}")
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


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse's own usage errors raise SystemExit(2))."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if not args.verbose:
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars of every from_pretrained
    try:
        with console_logging():  # the step lines of grow (ligo_fast.apps loggers) on stdout, warnings on stderr
            return args.func(args)
    except UserError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # outside the training loop (which saves a checkpoint first)
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
