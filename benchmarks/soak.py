"""Random-signal soak over ``ligo-fast grow``, ``ligo-fast materialize`` and the Trainer path (issue 22).

    OMP_NUM_THREADS=1 python benchmarks/soak.py --trials 100 --minutes 25          # all three paths, interleaved
    OMP_NUM_THREADS=1 python benchmarks/soak.py --paths grow --trials 5 --seed 7   # a quick look at one path
    OMP_NUM_THREADS=1 python benchmarks/soak.py --replay grow:7000003              # one trial again, by its seed

Not part of the test suite (minutes, timing-dependent). Each trial starts a run, sends SIGKILL, SIGTERM, SIGINT or
SIGHUP at a random moment of it (sometimes a second signal shortly after: the user pressing Ctrl-C again), sometimes
interrupts the rerun too, then reruns to completion and checks the result against an uninterrupted run, bit for
bit. The first signal comes at a uniform random time within a warm uninterrupted run's length (a resumed run is
shorter: some of them finish first). Every interrupted run must end cleanly: its exit code 0 (it finished first),
128 + a sent signal (stopped and saved; a second signal during the clean-up after the first one, outside the
training loop, reports its own code), killed by the signal itself (SIGKILL, or a signal before the command
installed its handlers or after it returned: ``early``), or 2 with a one-line refusal; never a traceback. The final
rerun must exit 0 with the reference's outputs (or refuse in one line with exit code 2, counted apart).

* ``grow``: the tiny Llama of ``tests/_models.cli_small_config`` grown (hidden 16 -> 24, 2 -> 3 layers) for 6
  operator steps, a checkpoint every 2; the result is every file the manifest lists (:func:`same_content`: the
  tensors and metadata of safetensors files, the bytes of the others), the evaluation losses, and ``--out`` must
  hold no ``.tmp`` left-over and no checkpoint afterwards.
* ``materialize``: the grown operator written as a large HF model into a directory that, in half the trials, first
  holds the complete materialisation of another operator (grown with another seed). After the interrupted run the
  directory must hold one of the two complete outputs (verified against its manifest and the reference files) or
  read as incomplete (refused), never a mix; the rerun then writes the reference.
* ``trainer``: ``GrowingModel`` + ``GrowthCallback`` under an unmodified ``Trainer`` (tiny GPT-2 with a tied head,
  dropout on; 3 operator steps then 3 large-model steps, a checkpoint every 2 steps), resumed with
  ``resume_from_checkpoint=latest_complete_checkpoint(out)``; the result is the final model state. Trainer installs
  no signal handlers: SIGTERM/SIGHUP kill it at once, SIGINT is a KeyboardInterrupt; only the rerun is checked.

Every run is a child forked from this process after torch, transformers and ligo_fast are imported (``cli.main`` is
the ``ligo-fast`` entry point's function, as the console script runs it), so a trial takes seconds, not the
interpreter's start-up. Trials go round-robin over the paths until ``--trials`` each or ``--minutes`` in total;
the report gives counts per path and signal and every failure with the seed that replays it. The directories of
failed trials are kept under ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["LIGO_FAST_MEMORY_BUDGET"] = str(8 * 2**30)  # pinned: every run decides the same way

import torch  # noqa: E402

torch.set_num_threads(1)

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]  # this checkout's ligo_fast; tests/_models.py

from _models import build, configs, write_cli_inputs  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

import ligo_fast  # noqa: E402
from ligo_fast.apps import cli, commands, outputs  # noqa: E402,F401 - commands: imported before the forks
from ligo_fast.apps.errors import STOP_SIGNALS  # noqa: E402
from ligo_fast.integrations import GrowingModel, GrowthCallback, latest_complete_checkpoint  # noqa: E402

SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PATHS = ("grow", "materialize", "trainer")
GROW_STEPS = 6
GROW_ARGS = ["--steps", str(GROW_STEPS), "--batch-size", "2", "--seq-len", "8", "--save-every", "2"]
GROW_ARGS += ["--log-every", "2", "--no-progress", "--device", "cpu"]
TRAINER_STEPS, TRAINER_OP_STEPS = 6, 3
HANG_S = 120  # a run still alive this long after its signal is a hang (killed and reported)
EARLY = "soak: KeyboardInterrupt before cli.main caught it"  # the interpreter's own Ctrl-C window


# ---------------------------------------------------------------------------------------------- set-up
def make_inputs(root: Path) -> Path:
    """The small model, the large config and the corpus of the CLI runs (as in tests/test_cli_guarantees.py)."""
    fx = root / "inputs"
    fx.mkdir(parents=True)
    write_cli_inputs(fx, "corpus/a.txt")
    return fx


def grow_argv(fx: Path, out: Path, seed: int = 0) -> list[str]:
    return [
        "grow", "--small", str(fx / "small"), "--large-config", str(fx / "large.json"), "--data", str(fx / "corpus"),
        "--out", str(out), "--seed", str(seed), *GROW_ARGS,
    ]  # fmt: skip


def materialize_argv(fx: Path, operator: Path, out: Path) -> list[str]:
    return ["materialize", "--small", str(fx / "small"), "--operator", str(operator), "--out", str(out)]


def trainer_job(out: Path) -> int:
    """The Trainer path: grow a tiny GPT-2, train through growth, resume from the newest complete checkpoint, and
    write the final state (atomically) to ``out/final.safetensors``."""
    small_cfg, large_cfg = configs("GPT2LMHeadModel", tie=True)
    small = build("GPT2LMHeadModel", small_cfg, seed=3)
    g = torch.Generator().manual_seed(11)
    data = []
    for _ in range(16):
        ids = torch.randint(1, small_cfg.vocab_size, (9,), generator=g)
        data.append({"input_ids": ids, "attention_mask": torch.ones(9, dtype=torch.long), "labels": ids.clone()})
    model = GrowingModel(ligo_fast.grow(small, large_cfg, seed=0))
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=2, max_steps=TRAINER_STEPS, save_steps=2,
        logging_steps=1, report_to=[], disable_tqdm=True, use_cpu=True,
    )  # fmt: skip
    tr = Trainer(model=model, args=args, train_dataset=data)
    tr.add_callback(GrowthCallback(tr, operator_steps=TRAINER_OP_STEPS, operator_lr=1e-2))
    tr.train(resume_from_checkpoint=latest_complete_checkpoint(out))
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "final.tmp"))
    os.replace(out / "final.tmp", out / "final.safetensors")
    return 0


# ---------------------------------------------------------------------------------------------- children
def spawn(job, log: Path) -> int:
    """Fork a child that runs ``job()`` with stdout/stderr in ``log``.out/.err and exits with its return value."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        for fd, ext in ((1, "out"), (2, "err")):
            f = os.open(f"{log}.{ext}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(f, fd)
            os.close(f)
        code = job()
    except KeyboardInterrupt:
        print(EARLY, file=sys.stderr)
        code = 130
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported through the exit code and the log
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def cli_job(argv: list[str]):
    def job() -> int:
        code = cli.main(argv)
        for s in STOP_SIGNALS:  # as cli.entry does after main returned
            signal.signal(s, signal.SIG_IGN)
        return code

    return job


def run(job, log: Path, rng: random.Random | None = None, at: float = 0.0, sigs: tuple = ()) -> dict:
    """Run ``job`` in a child; with ``sigs``, send the first ``at`` seconds after the start and each further one
    0-0.3 s later (when the child is still alive). Returns {status, code|signal, sent, wall, err}."""
    t0 = time.monotonic()
    pid = spawn(job, log)
    sent = []
    status = None
    for k, s in enumerate(sigs):
        deadline = t0 + at if k == 0 else time.monotonic() + rng.uniform(0, 0.3)
        while status is None and time.monotonic() < deadline:
            status = _poll(pid)
            time.sleep(0.005)
        if status is not None:
            break
        os.kill(pid, s)
        sent.append(signal.Signals(s).name)
    t_sig = time.monotonic()
    while status is None:
        status = _poll(pid)
        if status is None:
            if time.monotonic() - t_sig > HANG_S:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return {"status": "hang", "sent": sent, "wall": time.monotonic() - t0, "err": _read(log, "err")}
            time.sleep(0.01)
    wall = time.monotonic() - t0
    res = {"sent": sent, "wall": wall, "err": _read(log, "err")}
    if os.WIFSIGNALED(status):
        return {**res, "status": "signaled", "signal": signal.Signals(os.WTERMSIG(status)).name}
    return {**res, "status": "exited", "code": os.WEXITSTATUS(status)}


def _poll(pid: int):
    p, status = os.waitpid(pid, os.WNOHANG)
    return status if p == pid else None


def _read(log: Path, ext: str) -> str:
    p = Path(f"{log}.{ext}")
    return p.read_text(errors="replace") if p.exists() else ""


# ---------------------------------------------------------------------------------------------- checks
def interrupted_ok(r: dict, cli_path: bool) -> tuple[str, str | None]:
    """(outcome, problem) of an interrupted run. Outcomes: finished, stopped (128 + signal), killed, early (a signal
    before the command's handlers), refused (2, one line); problem: None or what is wrong."""
    if r["status"] == "hang":
        return "hang", f"still running {HANG_S} s after {r['sent']}"
    err = r["err"]
    if r["status"] == "signaled":
        name = r["signal"]
        if name == "SIGKILL" or not cli_path or name not in r["sent"]:
            return ("killed", None) if name in r["sent"] else ("killed", f"died of {name}, not sent")
        return "early", None  # a CLI killed by SIGTERM/SIGHUP/SIGINT: before cli.main installed its handlers
    code = r["code"]
    if not cli_path:
        if code == 130 and EARLY in err:
            return "stopped", None  # Trainer: a KeyboardInterrupt (no handlers of its own)
        return ("finished", None) if code == 0 else ("other", f"exit {code}: {_last(err)}")
    if EARLY in err:
        return "early", None
    if "Traceback" in err:
        return "other", f"exit {code} with a traceback: {_last(err)}"
    if code == 0:
        return "finished", None
    if code == 2:
        lines = [x for x in err.splitlines() if "error:" in x]
        return "refused", None if len(lines) == 1 else f"exit 2 without one error line: {_last(err)}"
    if code in {128 + signal.Signals[name].value for name in r["sent"]}:
        return "stopped", None  # the first signal's code, or a second one's that came during the exit's clean-up
    return "other", f"exit {code} after {r['sent']}: {_last(err)}"


def _last(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1][:300] if lines else "(no stderr)"


def same_content(out: Path, ref: Path) -> str | None:
    """None when ``out`` holds the files of ``ref``'s manifest with the same content: safetensors files by their
    tensors (dtype, shape, every bit) and metadata (as a dict: safetensors writes the metadata keys in a random order,
    so two writes of the same tensors differ in their header bytes, see the results file), the others byte for byte
    (sha256). Else what differs."""
    m, r = outputs.read_manifest(out), outputs.read_manifest(ref)
    if m is None or set(m["files"]) != set(r["files"]):
        return f"other files: {sorted(m['files']) if m else None} vs {sorted(r['files'])}"
    for name, info in r["files"].items():
        if not name.endswith(".safetensors"):
            if m["files"][name]["sha256"] != info["sha256"]:
                return f"{name} differs"
            continue
        a, b = _tensors(out / name), _tensors(ref / name)
        if a[1] != b[1]:
            return f"{name}: other metadata"
        if a[0].keys() != b[0].keys():
            return f"{name}: other tensors"
        bad = [k for k in b[0] if a[0][k].dtype != b[0][k].dtype or not torch.equal(a[0][k], b[0][k])]
        if bad:
            return f"{name}: {len(bad)} tensors differ, e.g. {bad[:3]}"
    return None


def _tensors(p: Path) -> tuple[dict, dict]:
    with safe_open(str(p), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118


def check_grow(out: Path, ref: Path) -> str | None:
    try:
        m = outputs.check_outputs(out)
    except outputs.OutputsError as e:
        return f"outputs do not verify: {e}"
    if m is None:
        return "no manifest"
    r = outputs.read_manifest(ref)
    if m.get("step") != GROW_STEPS:
        return f"step {m.get('step')}"
    problem = same_content(out, ref)
    if problem:
        return f"not the uninterrupted run's outputs: {problem}"
    for key in ("small", "grown"):
        if m["eval"][key] != r["eval"][key]:
            return f"eval.{key} {m['eval'][key]} != {r['eval'][key]}"
    left = [p.name for p in out.rglob("*") if p.name.endswith(".tmp")]
    if left:
        return f"left-overs {left}"
    if (out / "checkpoint").exists():
        return "checkpoints left after a finished run"
    return None


def check_materialize(out: Path, ref: Path) -> str | None:
    try:
        m = outputs.check_outputs(out)
    except outputs.OutputsError as e:
        return f"outputs do not verify: {e}"
    if m is None or m.get("operator") != outputs.read_manifest(ref).get("operator"):
        return f"not the reference materialisation (operator {m and m.get('operator')})"
    problem = same_content(out, ref)
    if problem:
        return f"not the reference materialisation: {problem}"
    left = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    return f"left-overs {left}" if left else None


def materialize_between(out: Path, refs: list[Path]) -> str | None:
    """After an interrupted materialize: one complete output (A's or B's, verified) or an incomplete one, never a
    mix."""
    if not out.exists():
        return None
    try:
        m = outputs.check_outputs(out)
    except outputs.OutputsError:
        return None  # incomplete: refused as such (the rerun repairs it)
    if m is None:
        present = outputs.output_files(out)
        return f"files {present} without a manifest and not marked incomplete" if present else None
    for ref in refs:
        if m.get("operator") == outputs.read_manifest(ref).get("operator") and same_content(out, ref) is None:
            return None
    return f"a verified manifest of neither output (operator {m.get('operator')})"


def check_trainer(out: Path, ref: dict) -> str | None:
    p = out / "final.safetensors"
    if not p.exists():
        return "no final state"
    got = load_file(str(p))
    if got.keys() != ref.keys():
        return f"other keys: {sorted(set(got) ^ set(ref))[:4]}"
    bad = [k for k in ref if not torch.equal(got[k], ref[k])]
    return f"{len(bad)} tensors differ from the uninterrupted run, e.g. {bad[:3]}" if bad else None


# ---------------------------------------------------------------------------------------------- trials
class Soak:
    def __init__(self, root: Path):
        self.root = root
        self.fx = make_inputs(root)
        self.ref: dict[str, object] = {}
        self.wall: dict[str, float] = {}
        ref = root / "ref"
        ref.mkdir()
        for name, job, out in (
            ("grow", cli_job(grow_argv(self.fx, ref / "grow")), ref / "grow"),
            ("grow_b", cli_job(grow_argv(self.fx, ref / "grow_b", seed=1)), ref / "grow_b"),
            ("materialize", cli_job(materialize_argv(self.fx, ref / "grow", ref / "mat")), ref / "mat"),
            ("materialize_b", cli_job(materialize_argv(self.fx, ref / "grow_b", ref / "mat_b")), ref / "mat_b"),
            ("trainer", lambda: trainer_job(ref / "trainer"), ref / "trainer"),
        ):
            r = run(job, ref / name)
            if r.get("code") != 0:
                raise SystemExit(f"the uninterrupted {name} run failed: {r}")
            self.wall[name] = r["wall"]
            self.ref[name] = load_file(str(out / "final.safetensors")) if name == "trainer" else out
        self.op = ref / "grow"
        for name in PATHS:  # the signal times follow a warm run's length (the first child imported more)
            r = run(self.job(name, ref / f"warm_{name}"), ref / f"warm_{name}")
            self.wall[name] = r["wall"] if r.get("code") == 0 else self.wall[name]

    def job(self, path: str, d: Path):
        if path == "grow":
            return cli_job(grow_argv(self.fx, d / "out"))
        if path == "materialize":
            return cli_job(materialize_argv(self.fx, self.op, d / "out"))
        return lambda: trainer_job(d / "out")

    def trial(self, path: str, seed: int) -> dict:
        rng = random.Random(seed)
        d = self.root / "trials" / f"{path}-{seed}"
        d.mkdir(parents=True)
        if path == "materialize" and rng.random() < 0.5:  # replacing an earlier output (issue 22 N6)
            shutil.copytree(self.root / "ref" / "mat_b", d / "out")
        n_interrupts = 1 if rng.random() < 0.7 else 2
        info = {"path": path, "seed": seed, "runs": []}
        problem = None
        for k in range(n_interrupts):
            first = rng.choice(SIGNALS)
            sigs = (first,) if rng.random() < 0.8 else (first, rng.choice(SIGNALS))
            at = rng.uniform(0, self.wall[path])
            r = run(self.job(path, d), d / f"run{k}", rng, at, sigs)
            outcome, problem = interrupted_ok(r, path != "trainer")
            info["runs"].append({"signals": r["sent"], "planned": [signal.Signals(s).name for s in sigs],
                                 "at": round(at, 3), "outcome": outcome,
                                 **({"stderr": _last(r["err"])} if outcome in ("refused", "other") else {}),
                                 })  # fmt: skip
            if problem is None and path == "materialize":
                problem = materialize_between(d / "out", [self.ref["materialize"], self.ref["materialize_b"]])
            if problem:
                break
        if problem is None:
            r = run(self.job(path, d), d / "final")
            outcome, problem = interrupted_ok(r, path != "trainer")
            info["final"] = outcome
            if problem is None and outcome == "finished":
                problem = {"grow": check_grow, "materialize": check_materialize, "trainer": check_trainer}[path](
                    d / "out", self.ref[path]
                )
            elif problem is None and outcome != "refused":
                problem = f"the rerun did not finish: {outcome}"
        info["problem"] = problem
        if problem is None:
            shutil.rmtree(d, ignore_errors=True)
        else:
            info["kept"] = str(d)
        return info


def report(results: list[dict], minutes: float, args) -> str:
    lines = [f"soak: {len(results)} trials in {minutes:.1f} min (seed {args.seed}; machine shared, 2 cores)"]
    for path in PATHS:
        rs = [r for r in results if r["path"] == path]
        if not rs:
            continue
        by_sig = Counter(r["runs"][0]["planned"][0] for r in rs)
        outcomes = Counter(run["outcome"] for r in rs for run in r["runs"])
        finals = Counter(r.get("final", "-") for r in rs)
        fails = [r for r in rs if r["problem"]]
        lines.append(
            f"- {path}: {len(rs)} trials, {sum(len(r['runs']) for r in rs)} interrupted runs; first signal "
            f"{dict(sorted(by_sig.items()))}; interrupted-run outcomes {dict(sorted(outcomes.items()))}; reruns "
            f"{dict(sorted(finals.items()))}; failures {len(fails)}"
        )
    sig_fail = defaultdict(int)
    for r in results:
        if r["problem"]:
            sig_fail[(r["path"], r["runs"][0]["planned"][0] if r["runs"] else "-")] += 1
    fails = [r for r in results if r["problem"]]
    for r in fails:
        lines.append(f"  FAIL {r['path']}:{r['seed']} runs {r['runs']}: {r['problem']} (kept {r.get('kept')})")
    if not fails:
        lines.append("- every trial ended with the uninterrupted run's result bit for bit, or a clean refusal")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paths", default=",".join(PATHS), help="comma-separated: grow, materialize, trainer")
    ap.add_argument("--trials", type=int, default=100, help="trials per path (default 100)")
    ap.add_argument("--minutes", type=float, default=25.0, help="stop starting trials after this long (default 25)")
    ap.add_argument("--seed", type=int, default=0, help="base seed: trial i of a path has seed seed*1e6 + i")
    ap.add_argument("--replay", default=None, metavar="PATH:SEED", help="run one trial again")
    ap.add_argument("--workdir", default=None, help="where trials run (default: a new temporary directory)")
    ap.add_argument("--json", default=None, help="write every trial's record here")
    args = ap.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="ligo_soak_"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    print(f"ligo_fast from {Path(ligo_fast.__file__).parent}", flush=True)
    soak = Soak(root)
    print(f"references in {time.monotonic() - t0:.1f} s; uninterrupted wall s: "
          f"{ {k: round(v, 2) for k, v in soak.wall.items()} }; work in {root}", flush=True)  # fmt: skip
    if args.replay:
        path, seed = args.replay.split(":")
        r = soak.trial(path, int(seed))
        print(json.dumps(r, indent=1))
        return 1 if r["problem"] else 0
    paths = [p for p in args.paths.split(",") if p]
    results: list[dict] = []
    for i in range(args.trials):
        for path in paths:
            if time.monotonic() - t0 > 60 * args.minutes:
                break
            r = soak.trial(path, args.seed * 1_000_000 + PATHS.index(path) * 100_000 + i)
            results.append(r)
            if r["problem"]:
                print(f"FAIL {path}:{r['seed']}: {r['problem']}", flush=True)
        else:
            if (i + 1) % 10 == 0:
                print(f"{i + 1} trials per path, {(time.monotonic() - t0) / 60:.1f} min", flush=True)
            continue
        break
    text = report(results, (time.monotonic() - t0) / 60, args)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if not any(r["problem"] for r in results):
        shutil.rmtree(root / "trials", ignore_errors=True)
    return 1 if any(r["problem"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
