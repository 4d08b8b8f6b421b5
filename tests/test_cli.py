"""Tests for the ``symode`` command (symode.cli) on a tiny configuration."""

import contextlib
import io
import json
import os
import runpy
import shutil
import subprocess
import sys

import pytest
import torch

from symode.cli import main
from symode.gradients import GRADIENT_METHODS

TINY = ["--width", "16", "--batch", "4", "--repeats", "1", "--dtype", "float64", "--threads", "1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(the JSON report, the printed output) of one run, shared by the tests."""
    path = tmp_path_factory.mktemp("cli") / "report.json"
    out = io.StringIO()
    threads = torch.get_num_threads()
    with contextlib.redirect_stdout(out):
        assert main([*TINY, "--json", str(path)]) == 0
    assert torch.get_num_threads() == threads  # --threads does not leak out of main()
    with open(path) as fh:
        return json.load(fh), out.getvalue()


@pytest.fixture(scope="module")
def tiny_report(tiny_run):
    return tiny_run[0]


def _by_method(report):
    return {r["method"]: r for r in report["results"]}


def test_every_gradient_method_is_reported(tiny_report):
    results = _by_method(tiny_report)
    assert set(results) == set(GRADIENT_METHODS)
    assert tiny_report["results"][0]["method"] == "backprop"  # the reference comes first
    info = tiny_report["info"]
    assert info["y0_shape"] == [4, 43] and info["dtype"] == "float64" and info["threads"] == 1
    assert "dopri5" in info["solver"]


def test_gradients_agree_to_round_off_in_float64(tiny_report):
    for r in tiny_report["results"]:
        # exact methods agree to round-off; the continuous adjoint to its backward tolerance
        assert r["grad_rel_diff"] <= (1e-10 if GRADIENT_METHODS[r["method"]].exact else 1e-4), r
        assert r["grad_rel_diff_concat"] <= r["grad_rel_diff"] + 1e-16
    assert _by_method(tiny_report)["backprop"]["grad_rel_diff"] == 0.0


def test_symplectic_adjoint_uses_less_memory(tiny_report):
    results = _by_method(tiny_report)
    assert 0 < results["symplectic_adjoint"]["peak_memory_bytes"] < results["backprop"]["peak_memory_bytes"]


def test_function_evaluation_counts(tiny_report):
    results = _by_method(tiny_report)
    bp, sa = results["backprop"], results["symplectic_adjoint"]
    assert bp["num_accepted"] == sa["num_accepted"] > 0  # the same steps
    assert bp["num_rejected"] == sa["num_rejected"]
    assert bp["nfe_forward"] == sa["nfe_forward"]
    assert bp["nfe_backward"] == 0
    # dopri5, per accepted step: recompute 5 stages + 6 differentiated evaluations
    assert sa["nfe_backward"] == 11 * sa["num_accepted"]
    assert sa["nfe_backward_vjp"] == 6 * sa["num_accepted"]


def test_times_and_ratio(tiny_report):
    for r in tiny_report["results"]:
        assert len(r["times_s"]) == 1 and r["median_time_s"] > 0
    bp = _by_method(tiny_report)["backprop"]
    assert bp["time_ratio"] == 1.0 and bp["time_ratio_paired"] == 1.0
    for r in tiny_report["results"]:
        assert r["time_ratio"] > 0 and r["time_ratio_paired"] > 0


def test_table_is_printed(tiny_run):
    out = tiny_run[1]
    assert "symplectic_adjoint" in out and "backprop" in out and "peak MiB" in out
    assert "MLP 43 -> 16 -> 16 -> 43" in out


def test_bad_arguments_exit_with_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--gradients", "no_such_method"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["--method", "rk4"])  # a fixed-step method needs --step-size
    assert exc.value.code == 2
    assert "--step-size" in capsys.readouterr().err


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
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: symode" in proc.stdout
