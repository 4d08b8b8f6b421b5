"""The benchmark toolkit of symode: ``symode bench`` and the scripts in ``benchmarks/`` are
built on this public API, and nothing in the core imports it.

* problems (:mod:`~symode.bench.problems`): the paper's continuous normalizing flows and a
  plain neural ODE, as :class:`BenchProblem` objects (``loss``, ``inputs``, ``resample``);
* contestants (:mod:`~symode.bench.contestants`): symode's gradient methods and the peer
  libraries (:mod:`~symode.bench.peers`) behind one protocol, :class:`Contestant`;
* the memory measure (:mod:`~symode.bench.memory`): :func:`peak_memory`, exact and
  deterministic on the CPU;
* the harness (:mod:`~symode.bench.harness`): one training :func:`iteration`, the gradient
  error (:func:`rel_diffs`), the interleaved timing loop (:func:`interleave`), and
  :func:`run`, which measures everything into :class:`MethodResult` rows;
* the reports (:mod:`~symode.bench.report`): :func:`machine`, :func:`table`,
  :func:`write_csv`, :func:`write_json` (with date, commit and CPU model), plots.
"""

from .contestants import (
    REFERENCE,
    Contestant,
    PeerGradient,
    SymodeGradient,
    as_contestant,
    default_gradients,
    gradient_label,
    gradient_list,
    parse_gradient,
)
from .fields import CNFBlock, ConcatMLP, MLPField, gaussian_mixture
from .harness import DTYPES, MethodResult, MiB, interleave, iteration, rel_diffs, run
from .memory import MemoryResult, peak_memory, quiet_stderr
from .peers import CountingField, PeerUnsupported
from .problems import DEFAULT_PROBLEM, PROBLEMS, BenchProblem, CNFProblem, MLPProblem, SummedStats, get_problem
from .records import (
    MemoryCase,
    add_run_arguments,
    fixed_step_iteration,
    measure_iteration,
    memory_case,
    network_uses_per_step,
    run_and_record,
    saved_activation_bytes,
)
from .report import (
    import_pyplot,
    machine,
    recorded,
    save_figure,
    source_state,
    table,
    write_csv,
    write_json,
    write_plots,
)

__all__ = [
    "BenchProblem",
    "CNFProblem",
    "MLPProblem",
    "SummedStats",
    "PROBLEMS",
    "get_problem",
    "MLPField",
    "ConcatMLP",
    "CNFBlock",
    "gaussian_mixture",
    "Contestant",
    "SymodeGradient",
    "PeerGradient",
    "as_contestant",
    "default_gradients",
    "parse_gradient",
    "gradient_label",
    "gradient_list",
    "REFERENCE",
    "CountingField",
    "PeerUnsupported",
    "peak_memory",
    "MemoryResult",
    "quiet_stderr",
    "iteration",
    "rel_diffs",
    "interleave",
    "run",
    "MethodResult",
    "DTYPES",
    "MiB",
    "machine",
    "source_state",
    "table",
    "write_csv",
    "write_json",
    "import_pyplot",
    "write_plots",
    "save_figure",
    "DEFAULT_PROBLEM",
    "recorded",
    "MemoryCase",
    "memory_case",
    "network_uses_per_step",
    "saved_activation_bytes",
    "fixed_step_iteration",
    "measure_iteration",
    "add_run_arguments",
    "run_and_record",
]
