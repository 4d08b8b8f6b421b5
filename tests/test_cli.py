"""Tests for the ``symode`` command (symode.bench.cli) on tiny configurations."""

import contextlib
import csv
import importlib.util
import io
import json
import os
import runpy
import shutil
import subprocess
import sys

import pytest
import torch

import symode
from symode.bench import cli
from symode.bench.cli import DEFAULT_PROBLEM, Progress, default_gradients, gradient_label, main, parse_gradient
from symode.gradients import GRADIENT_METHODS, ContinuousAdjoint, SymplecticAdjoint

TINY = ["--width", "16", "--batch", "4", "--repeats", "1", "--dtype", "float64", "--threads", "1"]
DEFAULT_LABELS = [
    "backprop",
    "checkpoint",
    "one_checkpoint",
    "symplectic_adjoint",
    "symplectic_adjoint:store_stages",
    "adjoint",
]
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _run(argv):
    """(exit status, stdout, stderr) of ``main(argv)`` in-process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(JSON report, CSV rows, stdout, stderr) of one run with no command named (i.e. bench)."""
    d = tmp_path_factory.mktemp("cli")
    threads = torch.get_num_threads()
    status, out, err = _run([*TINY, "--json", str(d / "r.json"), "--csv", str(d / "r.csv")])
    assert status == 0, err
    assert torch.get_num_threads() == threads  # --threads does not leak out of main()
    with open(d / "r.json") as fh:
        report = json.load(fh)
    with open(d / "r.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return report, rows, out, err


@pytest.fixture(scope="module")
def tiny_report(tiny_run):
    return tiny_run[0]


def _by_method(report):
    return {r["method"]: r for r in report["results"]}


def test_default_problem_and_methods(tiny_report):
    assert [r["method"] for r in tiny_report["results"]] == DEFAULT_LABELS  # the reference first
    info = tiny_report["info"]
    assert info["problem"] == DEFAULT_PROBLEM == "miniboone"
    assert info["y0_shape"] == [4, 43] and info["dtype"] == "float64" and info["threads"] == 1
    assert info["solver"] == "dopri5, adaptive, rtol=1e-05, atol=1e-05"
    assert info["blocks"] == 1 and "Hutchinson" in info["vector_field"] and info["wall_time_s"] > 0


def test_no_command_runs_bench_with_a_note(tiny_run):
    err = tiny_run[3]
    assert "running 'symode bench'" in err
    assert "\r" not in err  # no progress bar when stderr is not a terminal


def test_gradients_agree_to_round_off_in_float64(tiny_report):
    for r in tiny_report["results"]:
        exact = not r["method"].startswith("adjoint")
        # exact methods agree to round-off; the continuous adjoint to its backward tolerance
        assert r["grad_rel_diff"] <= (1e-10 if exact else 1e-3), r
        assert r["grad_rel_diff_concat"] <= r["grad_rel_diff"] + 1e-16
    assert _by_method(tiny_report)["backprop"]["grad_rel_diff"] == 0.0


def test_memory(tiny_report):
    results = _by_method(tiny_report)
    bp, sa = results["backprop"], results["symplectic_adjoint"]
    assert 0 < sa["peak_memory_bytes"] < bp["peak_memory_bytes"]
    assert bp["memory_ratio"] == 1.0
    assert sa["memory_ratio"] == pytest.approx(sa["peak_memory_bytes"] / bp["peak_memory_bytes"])


def test_function_evaluation_counts(tiny_report):
    results = _by_method(tiny_report)
    bp, sa, st = results["backprop"], results["symplectic_adjoint"], results["symplectic_adjoint:store_stages"]
    assert bp["num_accepted"] == sa["num_accepted"] == st["num_accepted"] > 0  # the same steps
    assert bp["nfe_forward"] == sa["nfe_forward"] == st["nfe_forward"]
    assert bp["nfe_backward"] == 0
    # dopri5, per accepted step: recompute 5 stages + 6 differentiated evaluations; 6 with stored stages
    assert sa["nfe_backward"] == 11 * sa["num_accepted"] and sa["nfe_backward_vjp"] == 6 * sa["num_accepted"]
    assert st["nfe_backward"] == st["nfe_backward_vjp"] == 6 * st["num_accepted"]


def test_times_and_ratio(tiny_report):
    for r in tiny_report["results"]:
        assert len(r["times_s"]) == 1 and r["median_time_s"] > 0
        assert r["time_ratio"] > 0 and r["time_ratio_paired"] > 0
    bp = _by_method(tiny_report)["backprop"]
    assert bp["time_ratio"] == 1.0 and bp["time_ratio_paired"] == 1.0


def test_csv_matches_json(tiny_run):
    report, rows = tiny_run[0], tiny_run[1]
    assert [row["method"] for row in rows] == DEFAULT_LABELS
    for row, r in zip(rows, report["results"]):
        assert row["problem"] == "miniboone" and row["batch"] == "4" and row["dtype"] == "float64"
        assert int(row["peak_memory_bytes"]) == r["peak_memory_bytes"]
        assert int(row["nfe_backward"]) == r["nfe_backward"]
        assert float(row["grad_rel_diff"]) == pytest.approx(r["grad_rel_diff"], rel=1e-12, abs=1e-300)
        assert [float(t) for t in row["times_s"].split(";")] == pytest.approx(r["times_s"], rel=1e-5)


def test_table_is_printed(tiny_run):
    out = tiny_run[2]
    for label in DEFAULT_LABELS:
        assert label in out
    assert "peak MiB" in out and "grad rel err" in out and "(reference)" in out
    assert "MLP 43 -> 16 -> 16 -> 43" in out and "wall time" in out


def test_reference_in_float64_and_other_problem(tmp_path):
    path = tmp_path / "r.json"
    status, out, err = _run(
        [
            "bench",
            "--problem",
            "gas",
            "--blocks",
            "2",
            "--width",
            "8",
            "--batch",
            "3",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--dtype",
            "float32",
            "--reference-dtype",
            "float64",
            "--gradients",
            "symplectic_adjoint",
            "--quiet",
            "--json",
            str(path),
        ]
    )
    assert status == 0 and err == ""  # --quiet: nothing on stderr
    report = json.loads(path.read_text())
    assert "float64" in report["info"]["gradient_reference"]
    results = _by_method(report)
    assert list(results) == ["backprop", "symplectic_adjoint"]
    for r in results.values():  # float32 round-off against the float64 exact gradient
        assert 0 < r["grad_rel_diff"] < 1e-3
    assert results["backprop"]["num_accepted"] >= 2 * 2
    assert "(reference)" not in out


def test_parse_gradient_round_trips_every_configuration():
    for cls in GRADIENT_METHODS.values():
        for m in cls.configurations():
            assert parse_gradient(gradient_label(m)) == m
    assert parse_gradient("symplectic_adjoint:store_stages") == SymplecticAdjoint(store_stages=True)
    assert parse_gradient("symplectic:max_checkpoints=4") == SymplecticAdjoint(max_checkpoints=4)
    assert parse_gradient("adjoint:seminorm") == ContinuousAdjoint(norm="seminorm")
    assert gradient_label(ContinuousAdjoint(rtol=1e-7)) == "adjoint:rtol=1e-07"
    assert [gradient_label(m) for m in default_gradients()] == DEFAULT_LABELS
    with pytest.raises(ValueError, match="no option"):
        parse_gradient("symplectic_adjoint:nope")
    with pytest.raises(ValueError, match="max_checkpoints"):
        parse_gradient("symplectic_adjoint:max_checkpoints=-1")


def test_bad_arguments_exit_with_usage_error(capsys):
    for argv, text in (
        (["bench", "--gradients", "no_such_method"], "no_such_method"),
        (["bench", "--gradients", "symplectic_adjoint:nope"], "no option"),
        (["bench", "--method", "rk4"], "--step-size"),  # a fixed-step method needs a step size
        (["bench", "--batch", "0"], "--batch"),
        (["bench", "--problem", "mnist"], "invalid choice"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert text in capsys.readouterr().err


@pytest.mark.skipif(HAVE_MATPLOTLIB, reason="matplotlib is installed")
def test_plot_without_matplotlib_is_a_clear_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", *TINY, "--plot", str(tmp_path)])
    assert exc.value.code == 2
    assert "matplotlib" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing ran


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib is not installed (the bench extra)")
def test_plot_writes_pngs(tmp_path):
    status, _out, err = _run(["bench", *TINY, "--gradients", "symplectic_adjoint", "--plot", str(tmp_path / "fig")])
    assert status == 0, err
    pngs = sorted(p.name for p in (tmp_path / "fig").iterdir())
    assert pngs == ["miniboone_memory_vs_time.png", "miniboone_methods.png"]
    for name in pngs:
        assert (tmp_path / "fig" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_peers_without_the_module_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_peers_module", lambda: None)
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--peers"])
    assert exc.value.code == 2
    assert "symode.bench.peers" in capsys.readouterr().err


class _FakePeers:
    """A stand-in for symode.bench.peers: 'fake:odeint' solves with symode, 'fake:broken' fails,
    'fake:missing' is not installed."""

    @staticmethod
    def available():
        return {"fake:odeint": None, "fake:broken": None, "fake:missing": "not installed: pip install fake"}

    @staticmethod
    def solve(name, func, y0, t, *, method, rtol=1e-7, atol=1e-9, step_size=None, count=True):
        if name == "fake:broken":
            raise ValueError("fake:broken cannot run this")
        assert not count and t.dtype == y0[0].dtype
        return symode.odeint(func, y0, t, rtol=rtol, atol=atol, method=method)


def test_peers_run_beside_symodes_methods(monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "_peers_module", lambda: _FakePeers)
    path = tmp_path / "r.json"
    status, out, err = _run(
        ["bench", *TINY, "--gradients", "symplectic_adjoint", "--peers", "--quiet", "--json", str(path)]
    )
    assert status == 0, err
    report = json.loads(path.read_text())
    results = _by_method(report)
    assert list(results) == ["backprop", "symplectic_adjoint", "fake:odeint"]
    bp, peer = results["backprop"], results["fake:odeint"]
    assert peer["peer"] and not bp["peer"]
    # the same solve by backprop: the same evaluations, counted by the bench's own counter
    assert peer["nfe_forward"] == bp["nfe_forward"] and peer["nfe_backward"] == 0
    assert peer["grad_rel_diff"] < 1e-10 and peer["peak_memory_bytes"] > 0 and len(peer["times_s"]) == 1
    assert set(report["peers_skipped"]) == {"fake:broken", "fake:missing"}
    assert "cannot run this" in report["peers_skipped"]["fake:broken"]
    assert "skipped fake:missing: not installed" in out


def test_progress_line():
    stream = io.StringIO()
    p = Progress(4, enabled=True, stream=stream)
    p("time: backprop (repeat 1/2)")
    p("time: symplectic_adjoint (repeat 1/2)")
    p.close()
    text = stream.getvalue()
    assert text.count("\r") == 3 and "2/4 time: symplectic_adjoint (repeat 1/2)" in text
    silent = io.StringIO()
    q = Progress(4, enabled=False, stream=silent)
    q("x")
    q.close()
    assert silent.getvalue() == "" and q.done == 1


def test_help(capsys):
    for argv in (["--help"], ["bench", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: symode" in out and "usage: symode bench" in out and "--reference-dtype" in out


def test_python_m_symode_help(monkeypatch, capsys):
    # in-process (runpy) rather than a second interpreter: importing torch again costs seconds
    monkeypatch.setattr(sys, "argv", ["symode", "--help"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("symode", run_name="__main__", alter_sys=True)
    assert exc.value.code == 0
    assert "usage: symode" in capsys.readouterr().out


def test_console_script_help():
    script = shutil.which("symode", path=os.path.dirname(sys.executable)) or shutil.which("symode")
    assert script is not None, "the symode console script is not installed (pip install -e .)"
    proc = subprocess.run([script, "bench", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: symode bench" in proc.stdout
