"""benchmarks/gpu_check.sh cannot rot while no GPU is at hand: its smoke dry run (part 1's plumbing on a CPU, Triton
interpreted) passes and writes the summary; the summary survives failed sections; bench_expand's agreement check
catches a provider that computes something else, per module kind, and keeps going."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


@pytest.fixture
def bench_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_expand
    import gpu_summary

    return bench_expand, gpu_summary


@pytest.fixture
def model_check(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_model_check

    monkeypatch.setattr(gpu_model_check, "unavailable", {})
    return gpu_model_check


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the CPU stand-in for the GPU check")
def test_smoke_dry_run(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path / "out"), LIGO_GPU_CACHE=str(tmp_path / "cache"))
    env.pop("TRITON_INTERPRET", None)  # the script sets it itself
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--smoke"], capture_output=True, text=True, env=env, timeout=240
    )
    out = tmp_path / "out"
    assert len(list(out.iterdir())) <= 8  # all that comes back from a lent machine
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    sections = {r["name"]: r["status"] for r in rows if r["section"] == "gpu_check"}
    # a machine that cannot build the C++ extension fails that section only, and the rest runs without it
    ext_ok = sections.get("extension (build once)") == "ok"
    assert proc.returncode == (0 if ext_ok else 1), proc.stdout[-3000:] + proc.stderr[-2000:]
    bad = {k: v for k, v in sections.items() if v != "ok" and k not in ("total", "extension (build once)")}
    assert not bad and "environment" in sections and "kernel tests (interpreter subset)" in sections, sections
    assert any(k.startswith("operator step") and v == "ok" for k, v in sections.items()), sections
    assert any(k.startswith("expansion") and v == "ok" for k, v in sections.items()), sections
    checks = {r["provider"]: r["ok"] for r in rows if r.get("kind") == "check" and r["section"] == "expand"}
    assert checks == {"official": True, "official+compile": True, "triton": True, "triton-grouped": True}, checks
    modes = {(r["label"], r["mode"]) for r in rows if r.get("kind") == "time" and r["section"] == "expand"}
    assert ("torch (fp32 math)", "fwd+bwd") in modes and ("triton", "forward") in modes, modes
    summary = (out / "summary.md").read_text()
    assert "| environment | ok |" in summary and "## Expansion" in summary and "| bert | float16 | fwd+bwd |" in summary
    assert "passed" in summary  # the pytest line of the tests section
    # part 2's model check, its smoke case: every check of the torch backend (cpp where it built) ran and passed
    model = [r for r in rows if r["section"] == "model"]
    labels = {r["label"] for r in model if r["ok"]}
    want = {
        f"{c}: torch {v}" for c in ("plan", "binder") for v in ("lean factored", "lean materialize", "eager factored")
    }
    assert want | {"materialize()", "save_materialized()"} <= labels and all(r["ok"] for r in model), model
    assert any(k.startswith("model on cpu") and v == "ok" for k, v in sections.items()), sections
    assert "| model (vs float64 CPU, cpu) | llama | float32 | plan: torch lean factored | yes |" in summary
    assert (out / "model.log").read_text().count("PASS model llama") == len(model)


def test_summary_survives_failed_sections(tmp_path, bench_modules):
    _, gpu_summary = bench_modules
    rows = [
        {"section": "gpu_check", "name": "environment", "status": "ok", "seconds": 3},
        {"section": "gpu_check", "name": "expansion, bert", "status": "timed out after 120 s", "seconds": 120},
        {"section": "expand", "kind": "check", "shape": "bert", "dtype": "bfloat16", "provider": "triton",
         "label": "triton", "ok": False, "rel": 0.5, "tol": 0.03, "where": "ffn_in", "error": None},
    ]  # fmt: skip
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + '\n{"cut off')
    (tmp_path / "tests.log").write_text("FAILED tests/test_ops.py::test_expand[x] - boom\n3 failed, 9 passed in 4.2s\n")
    assert gpu_summary.main([str(tmp_path)]) == 0
    text = (tmp_path / "summary.md").read_text()
    assert "| expansion, bert | timed out after 120 s | 120 |" in text
    assert "| triton | NO | 5.0e-01 |" in text
    assert "1 malformed line(s)" in text and "3 failed, 9 passed" in text and "FAILED tests/test_ops.py" in text
    assert "not measured" in text  # goals without rows
    # a second tests section cut off before pytest's closing line: its -v outcome lines are counted
    (tmp_path / "tests.log").write_text(
        "\n### tests a\n1 passed in 1.0s\n\n### tests b\ntests/t.py::test_a PASSED [ 50%]\n"
        "tests/t.py::test_b[x] FAILED [100%]\n"
    )
    gpu_summary.main([str(tmp_path)])
    assert "1 passed, 1 failed, 0 error, 0 skipped" in (tmp_path / "summary.md").read_text()


def test_agreement_catches_a_wrong_provider(monkeypatch, bench_modules):
    bench_expand, _ = bench_modules
    from common import Kind

    kinds = [Kind("mat", 2, 3, 5, 7, 4, 6), Kind("vec", 2, 3, 5, 7)]
    problem = bench_expand.Problem(kinds, torch.float32, "cpu")
    real = bench_expand.ops.ligo_expand

    def off_by_a_bit(*a, **k):
        if k.get("backend") == "torch":
            return real(*a, **k)
        return real(*a, **k) * 1.01

    monkeypatch.setattr(bench_expand.ops, "ligo_expand", off_by_a_bit)
    res = bench_expand.check_agreement(problem, ["official", "torch", "triton"], tol=1e-3)
    assert res["official"]["ok"] and res["official"]["rel"] < 1e-6
    assert not res["triton"]["ok"] and res["triton"]["kind"] == "mat" and res["triton"]["rel"] > 5e-3

    def broken(*a, **k):
        if k.get("backend") == "torch":
            return real(*a, **k)
        raise RuntimeError("no kernel\nsecond line")

    monkeypatch.setattr(bench_expand.ops, "ligo_expand", broken)
    res = bench_expand.check_agreement(problem, ["official", "torch", "triton"], tol=1e-3)
    assert res["official"]["ok"] and not res["triton"]["ok"]
    assert res["triton"]["error"] == "RuntimeError: no kernel"


@pytest.mark.parametrize("fault", ["binder", "factored"])
def test_model_check_catches_a_fault_and_goes_on(monkeypatch, model_check, tmp_path, capsys, fault):
    """gpu_model_check.py: a binder that leaves its values installed, or a factored linear off by 1%, fails those
    checks (a FAIL line with the numbers, a row with ok false) and every other check still runs."""
    from ligo_fast import binding, factored

    if fault == "binder":
        monkeypatch.setattr(binding.Binding, "close", lambda self: None)
    else:
        real = factored.factored_linear
        monkeypatch.setattr(factored, "factored_linear", lambda *a, **k: real(*a, **k) * 1.01)
    rows = tmp_path / "rows.jsonl"
    assert model_check.main(["--device", "cpu", "--models", "llama", "--backends", "torch", "--jsonl", str(rows)]) == 1
    got = {r["label"]: r for r in map(json.loads, rows.read_text().splitlines())}
    assert {f"plan: torch {v}" for v in ("lean factored", "lean materialize", "eager factored")} <= set(got), got
    assert got["materialize()"]["ok"] and got["save_materialized()"]["ok"], got  # ran after the failures
    failed = sorted(k for k, r in got.items() if not r["ok"])
    if fault == "binder":  # its first forward leaves 100 values bound; the next ones may break on them (an error)
        assert (
            not got["binder: torch lean factored"]["ok"]
            and "left installed" in got["binder: torch lean factored"]["note"]
        )
        assert all(not r["ok"] for k, r in got.items() if k.startswith("binder")), got
    else:  # the plans that ran factored linears (auto's too, on a CPU) fail; lean with every weight produced is right
        factored_runs = sorted(k for k, r in got.items() if k.startswith("plan") and "factored=0" not in r["note"])
        assert len(got) == 10 and failed == factored_runs and "plan: torch eager factored" in failed, failed
        assert got["plan: torch lean factored"]["rel"] > 1e-3
    out = capsys.readouterr().out
    assert out.count("FAIL model llama") == len(failed) and "model checks: " in out


@pytest.mark.filterwarnings("ignore:backend 'cpp' is unavailable")  # materialize's automatic choice falls back
def test_model_check_skips_a_backend_that_does_not_load(monkeypatch, model_check, bench_modules, tmp_path):
    """A backend that does not load (the extension's build failed) is a SKIP, listed in the summary; the rest runs."""
    _, gpu_summary = bench_modules
    real = model_check.backends.load

    def load(name):
        if name == "cpp":
            raise model_check.backends.BackendUnavailable("backend 'cpp' is unavailable: no build")
        return real(name)

    monkeypatch.setattr(model_check.backends, "load", load)
    rows = tmp_path / "rows.jsonl"
    args = ["--device", "cpu", "--models", "llama", "--backends", "cpp,torch", "--jsonl", str(rows)]
    assert model_check.main(args) == 0
    got = [json.loads(line) for line in rows.read_text().splitlines()]
    assert sum(r["kind"] == "skip" for r in got) == 4 and sum(r["kind"] == "check" and r["ok"] for r in got) == 10
    gpu_summary.main([str(tmp_path)])
    assert (
        "- skipped: model llama plan: cpp lean factored: backend 'cpp' is unavailable"
        in (tmp_path / "summary.md").read_text()
    )
