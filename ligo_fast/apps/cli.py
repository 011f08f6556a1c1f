"""The ``ligo-fast`` command line (also ``python -m ligo_fast.apps.cli``): parsing, signals, exit codes.

    ligo-fast grow --small SMALL_DIR --large-config large.json --data corpus/ notes.txt --steps 100 --out grown/
    ligo-fast materialize --small SMALL_DIR --operator grown/ --out hf_model/
    ligo-fast info
    ligo-fast bench

``grow`` loads the small model from a local Hugging Face directory (the class named first in ``architectures`` of
its ``config.json``; a ``*ForCausalLM``/``*LMHeadModel`` or ``*ForMaskedLM`` class), reads the large config from a
JSON file (a full HF ``config.json``, or only the fields that change: the others are taken from the small config,
except those the config class derives from other fields, such as Llama's ``head_dim``), trains the LiGO operator
with AdamW for the budget of :func:`ligo_fast.budget.operator_budget` (``--steps``: 5% of ``--large-steps`` within
[10, 100], or 100 when ``--large-steps`` is not given; a linear warm-up over a tenth of them (at least 10, at most all
of them, from a function-preserving start), then a constant
learning rate: ``--lr``, by default the rule's from ``--large-lr``, divided by the square root of the small width
when the start is function-preserving, as the default inits ``lossless``/``lossless`` are),
and writes into ``--out`` the operator (``operator.safetensors`` + ``ligo_config.json``), the materialised large
model (``config.json`` + ``model.safetensors``, and the small model's tokenizer when it has one) and, last,
``ligo_fast_outputs.json``, the manifest naming the step and the digest of every file.

Guards (:mod:`ligo_fast.guard`): when the operator loss rises above its start in the first steps, one warning line
says so and what to try. Before and after training, the small and the grown model are evaluated on the same fixed
windows of the data (:data:`.commands.EVAL_WINDOWS` evenly spaced windows; the training batches are drawn from the
same text, so this is an evaluation on the training text, not a held-out one); a grown model worse than the small
one is reported on stderr as a warning and recorded in the manifest (``eval.worse_than_small``: true); the outputs
are still written and the exit code stays 0 (the model is the user's to inspect; scripts read the manifest).
``--select best`` (the default) writes the better of the operator's start and its trained end on those windows
(as ``transformers``' ``load_best_model_at_end``): when training made the evaluation loss worse than the start, the
start is written, one line says so, and the manifest records it (``eval.selected``: ``start``, with the trained
operator's loss in ``eval.trained``); from an exact (function-preserving) start the written model is then no worse
than the small one on those windows. ``--select last`` writes the trained operator whatever its loss.

Data: text files (directories are read recursively; binary files in them are skipped with a warning, named
binary files refused), concatenated in sorted order. Tokens come from the small model's tokenizer when its
directory has one, else they are the bytes 0..255 (the model's vocabulary must hold them). Batch ``k`` is drawn
from a generator seeded by ``(seed, k)``: random windows of ``--seq-len`` tokens, so a resumed run sees the same
batches; when the tokenizer puts a BOS token before every text (Gemma, Llama), every window (and every evaluation
window) starts with it, as the model was trained. Causal LMs: next-token loss (``labels = input_ids``). Masked
LMs: 15% of the positions (at least one a batch) are replaced by the mask id (the tokenizer's, else the config's
``mask_token_id``, else ``vocab_size - 1``) and predicted (``labels`` -100 elsewhere).

Resuming: every ``--save-every`` steps, on a stop signal (Ctrl-C, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1) and at the
end, the operator, the optimizer and the step count go to ``--out/checkpoint/`` (:mod:`.checkpoints`:
crash-consistent at every instant; the newest ``--keep-checkpoints`` of them, default 2, are kept, so a newest one
that cannot be read falls back to the previous one; a symbolic link ``checkpoint`` to a directory is followed).
Rerunning the same command resumes after the last finished step. Options and inputs that change the result (data
and small model by content digest, learning rate, seeds, ...) must match; the message names the fields that differ.
When checkpoints exist but none can be used, or they belong to another run, the command refuses; ``--restart``
starts over on purpose. After a finished run the checkpoints are removed unless ``--keep-checkpoints`` (which also
lets a larger ``--steps`` continue a finished run). The memory budget (what memory-lean mode and the factored forms
decide with) is decided once per run and recorded in its run record: ``--memory-budget``, else a resumed run's
recorded one (never the memory free at the resume), else ``LIGO_FAST_MEMORY_BUDGET``, else the memory free at the
start; so a resumed run makes the same choices however busy the machine is. One command at a time writes into an
output directory (a lock, never followed through a symbolic link); ``--out`` and ``--data`` must not contain each other.

Exit codes (:mod:`.errors`): 0 done; 1 a failure outside the input (a full disk: the path and the free space are
named; out of memory, including a growth refused before allocating because it cannot fit the memory budget; an
unexpected error, whose traceback ``--verbose`` shows); 2 a user error; 3 diverged (a non-finite loss or gradient:
the last finite checkpoint is kept); 128 + the signal's number when stopped by a signal (130 Ctrl-C, 143 SIGTERM,
129 SIGHUP, 131 SIGQUIT, 138 SIGUSR1: the checkpoint was saved; more signals while it exits are ignored); 141 the
reader of stdout went away (``| head -1``: the command stops quietly, as other command-line tools do). Every error
is one line on stderr. A stop signal whose exception Python had to drop (its handler ran inside a finalizer) is
sent again (:func:`_redeliver_interrupts`), one during a log line is not swallowed by logging, and one that a
library turned into its own error (a read cut short looks like a damaged file) still ends the command as stopped.

Start-up: this module imports only the standard library (and ``ligo_fast``'s lazy package); torch and
transformers are imported by :mod:`.commands` after the arguments are parsed, so ``--help``, ``--version`` and
argument errors answer at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from ligo_fast import __version__

from .errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    STOP_SIGNALS,
    CommandError,
    Interrupted,
    UserError,
    exit_code_for,
    one_line,
    out_of_memory,
    signal_word,
)

PROG = "ligo-fast"
DEPTH_DEFAULT, WIDTH_DEFAULT = "lossless", "lossless"  # ligo_fast.config.GROW_INITS (tests/test_cli.py checks)
LARGE_LR_DEFAULT = 3e-4  # a common AdamW peak of LLaMA/GPT-style pretraining (benchmarks/results/defaults_rationale.md)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG, description="LiGO growth operators: grow a pretrained model, materialise it, inspect backends."
    )
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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
    g.add_argument(
        "--steps",
        type=int,
        default=None,
        help="operator training steps (default: 5%% of --large-steps within [10, 100]; 100 without --large-steps; "
        "0 for depth-only growth from a function-preserving start: ligo_fast.budget)",
    )
    g.add_argument(
        "--large-steps",
        type=int,
        default=None,
        metavar="STEPS",
        help="the large model's planned training steps, from which the operator's budget follows (ligo_fast.budget)",
    )
    g.add_argument(
        "--large-lr",
        type=float,
        default=LARGE_LR_DEFAULT,
        metavar="LR",
        help=f"the large model's planned peak learning rate, from which the operator's follows (ligo_fast.budget: "
        f"divided by the square root of the small width from a function-preserving start; "
        f"default {LARGE_LR_DEFAULT:g})",
    )
    g.add_argument(
        "--lr",
        type=float,
        default=None,
        help="the operator's AdamW learning rate after the warm-up (default: the budget rule's, from --large-lr)",
    )
    g.add_argument(
        "--warmup",
        type=int,
        default=None,
        metavar="STEPS",
        help="linear learning-rate warm-up steps (default: a tenth of --steps, rounded up; at least 10, at most "
        "--steps, from a function-preserving start)",
    )
    g.add_argument("--batch-size", type=int, default=8, help="sequences per step (default 8)")
    g.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    g.add_argument("--seed", type=int, default=0, help="seed of the operator's init, the batches and dropout")
    g.add_argument(
        "--depth-init",
        default=DEPTH_DEFAULT,
        metavar="SCHEME",
        help=f"depth initialisation, a LiGOConfig.depth_init scheme (default {DEPTH_DEFAULT})",
    )
    g.add_argument(
        "--width-init",
        default=WIDTH_DEFAULT,
        metavar="SCHEME",
        help=f"width initialisation, a LiGOConfig.width_init scheme (default {WIDTH_DEFAULT})",
    )
    g.add_argument("--no-tie", action="store_true", help="every module gets its own width matrices")
    g.add_argument("--residual", action="store_true", help="add a trainable residual to every produced tensor")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: off; default 1.0)")
    g.add_argument("--log-every", type=_positive, default=10, help="print the loss every N steps (default 10)")
    g.add_argument("--save-every", type=_positive, default=10, help="checkpoint every N steps (default 10)")
    g.add_argument(
        "--keep-checkpoints",
        type=_positive,
        nargs="?",
        const=0,
        default=None,
        metavar="N",
        help="keep the newest N checkpoints while training (default 2: the newest and one to fall back on) and keep "
        "them after a finished run (without this option they are removed once the outputs are written)",
    )
    g.add_argument(
        "--select",
        choices=("best", "last"),
        default="best",
        help="which operator to write: best (default): of the operator's start and its trained end, the one with "
        "the lower evaluation loss (said in one line and recorded in the manifest); last: the trained one",
    )
    g.add_argument(
        "--restart",
        action="store_true",
        help="start over from step 0 on purpose: remove the checkpoints of --out (also those of another run or "
        "input); its previous outputs stay until the new ones replace them",
    )
    g.add_argument(
        "--memory-budget",
        default=None,
        metavar="BYTES",
        help="memory the run's memory decisions plan with, e.g. 16GiB (default: a resumed run's recorded budget, "
        "else LIGO_FAST_MEMORY_BUDGET, else the memory free at the start; decided once and recorded in the run)",
    )
    _common(g)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--max-steps-this-run", type=_positive, default=None, help=argparse.SUPPRESS)

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
    m.add_argument(
        "--max-shard-size",
        default="5GB",
        help="largest safetensors shard, e.g. 5GB or 500MiB (default 5GB; larger models get shards and an index)",
    )
    _common(m)

    sub.add_parser("info", help="versions, devices, backends (with the reason when one is unavailable)")

    b = sub.add_parser("bench", help="quick timing of ligo_expand on BERT 6L/512H -> 12L/768H shapes")
    b.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    b.add_argument("--quick", action="store_true", help="4x smaller shapes")
    b.add_argument("--min-time", type=float, default=0.2, help="seconds of timing per case (default 0.2)")
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


_received: list[int] = []  # the stop signals whose handler ran during the current main()


def _terminate(signum, frame) -> None:
    _received.append(signum)
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse's own usage errors raise SystemExit(2))."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    on_main = threading.current_thread() is threading.main_thread()
    # SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 like Ctrl-C (cleanups run): by default they would kill the process at once;
    # Ctrl-C too, so that every stop is recorded (_received: one a library turned into its own error is still a stop)
    _received.clear()
    caught = list(STOP_SIGNALS) if on_main else []
    old_handlers = {s: signal.signal(s, _terminate) for s in caught}
    old_hook, timers = sys.unraisablehook, []
    sys.unraisablehook = _redeliver_interrupts(old_hook, timers)
    try:
        from ligo_fast import backends

        from . import commands  # torch and transformers: only now that the arguments are known
        from .progress import console_logging

        if args.command != "info":  # info reports a bad LIGO_FAST_BACKEND instead of refusing it
            try:
                named = backends.check_env()
                if named != "auto":  # a backend the user names must load here, not fail at the first forward
                    backends.load(named)
            except ValueError as e:
                raise UserError(str(e)) from e
            except backends.BackendUnavailable as e:
                raise UserError(f"{backends.ENV_VAR}={named}: {one_line(e)}") from e

        commands.quiet_transformers(args.verbose)
        with console_logging():  # the step lines of grow (ligo_fast.apps loggers) on stdout, warnings on stderr
            return getattr(commands, f"cmd_{args.command}")(args)
    except CommandError as e:
        if _received:  # the stop's KeyboardInterrupt became this error in a library (a read cut short: "damaged")
            return _stopped(args.command, _received[0], on_main)
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # stdout's reader is gone (| head): stop quietly, as other command-line tools do
        _stdout_to_devnull()
        return exit_code_for(signal.SIGPIPE)
    except OSError as e:  # a full disk (DiskFullError names the path and the free space), permissions, I/O
        if _received:
            return _stopped(args.command, _received[0], on_main)
        print(f"{PROG} {args.command}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as e:  # outside the training loop (which saves a checkpoint first)
        return _stopped(args.command, e.signum if isinstance(e, Interrupted) else signal.SIGINT, on_main)
    except Exception as e:
        if _received:
            return _stopped(args.command, _received[0], on_main)
        if out_of_memory(e):  # torch's allocator, CUDA, or the refusal of a growth that cannot fit the budget
            print(f"{PROG} {args.command}: error: out of memory: {one_line(e)}", file=sys.stderr)
            return EXIT_FAILED
        if args.verbose:
            raise
        where = "(--verbose shows where)"
        print(f"{PROG} {args.command}: error: {type(e).__name__}: {one_line(e)} {where}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        sys.unraisablehook = old_hook
        for t in timers:  # a signal not yet sent again when the command ended: not after it
            t.cancel()
        for s, old in old_handlers.items():
            signal.signal(s, old)


REDELIVER_S = 0.05  # after a stop signal's exception was dropped, the signal comes again this many seconds later


def _redeliver_interrupts(previous, timers: list):
    """A ``sys.unraisablehook`` that sends a stop signal again when its KeyboardInterrupt was raised where Python
    cannot propagate it (a finalizer, a weakref callback: the handler runs at any point, and such an exception is
    only printed as 'Exception ignored in' and dropped, so the command went on as if never stopped). The signal is
    sent again :data:`REDELIVER_S` later from a helper thread, so the handler runs once this hook has returned, in
    code that can stop (sent at once, the handler would run inside the hook, where its exception is dropped too).
    Other unraisable exceptions go to ``previous``; ``timers`` collects the helpers (cancelled when main ends)."""

    def hook(unraisable) -> None:
        e = unraisable.exc_value
        if isinstance(e, KeyboardInterrupt):
            signum = getattr(e, "signum", None) or signal.SIGINT
            again = threading.Timer(REDELIVER_S, os.kill, (os.getpid(), signum))
            again.daemon = True
            timers.append(again)
            again.start()
        else:
            previous(unraisable)

    return hook


def _stopped(command: str, signum: int | None, on_main: bool) -> int:
    """The end of a command stopped by ``signum``: one line, 128 + its number; more signals are ignored from here
    (no traceback from the middle of the exit path)."""
    _ignore_signals(on_main)
    print(f"{PROG} {command}: {signal_word(signum)}", file=sys.stderr)
    return exit_code_for(signum) if signum is not None else EXIT_INTERRUPTED


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush does not fail on the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real stdout (captured in tests): nothing to flush
        pass


def _ignore_signals(on_main: bool) -> None:
    if on_main:
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)


def entry() -> None:
    """The ``ligo-fast`` program: :func:`main`, then exit with its code. A Ctrl-C pressed after main returned (the
    user pressing repeatedly) is ignored: it used to interrupt the interpreter's shutdown with a traceback."""
    code = main()
    _ignore_signals(threading.current_thread() is threading.main_thread())
    sys.exit(code)


if __name__ == "__main__":
    entry()
