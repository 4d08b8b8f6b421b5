"""Print the structure of the symode package and check its rules; exit 1 if one is broken.

For every module of ``src/symode`` (and every script of ``benchmarks/``): its line count and
what it imports from symode. Then the rules:

1. the core (``symode`` and ``symode.gradients``) never imports ``symode.bench`` or
   ``symode.train`` (the training workflows, a package of their own like the bench;
   ``symode/__main__.py``, the ``python -m symode`` entry point of the command, aside);
2. no module of the package is over 400 lines (the scripts' sizes are listed);
3. the command's module, ``symode.bench.cli``, only parses and wires: no function of it over
   60 lines;
4. no private name crosses a package: a module imports a name starting with ``_`` (or a
   private module ``symode._x``) only from its own package (``symode.bench`` modules from
   ``symode.bench``, the core from the core); the benchmark scripts only public names.

Run: ``python tools/structure.py`` (from the repository root).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
MAX_LINES = 400
MAX_CLI_FUNCTION = 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_of(module: str, is_package: bool) -> str:
    """``symode.bench`` for its modules, ``symode`` for the core (``symode.gradients``
    counts as part of the core package: it is its subpackage of gradient methods)."""
    if module == "symode.bench" or module.startswith("symode.bench."):
        return "symode.bench"
    if module == "symode.train" or module.startswith("symode.train."):
        return "symode.train"
    if module.startswith("symode"):
        return "symode"
    return module


def imports(tree: ast.Module, module: str, is_package: bool) -> list[tuple[str, list[str]]]:
    """``(imported module, [names])`` for every import of symode in ``tree``."""
    found = []
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("symode"):
                found.append((target, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("symode"):
                    found.append((a.name, []))
    return found


def is_private(name: str) -> bool:
    """A private module path or name: a part starting with ``_`` that is not a dunder."""
    return any(part.startswith("_") and not part.startswith("__") for part in name.split("."))


def main() -> int:
    problems: list[str] = []
    rows = []
    files = sorted(SRC.rglob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
    for path in files:
        text = path.read_text()
        lines = text.count("\n")
        is_script = path.parent.name == "benchmarks"
        is_package = path.name == "__init__.py"
        module = f"benchmarks/{path.name}" if is_script else module_name(path)
        own = "benchmarks" if is_script else package_of(module, is_package)
        tree = ast.parse(text)
        found = imports(tree, module if not is_script else "benchmarks", is_package)
        if module == "symode.bench.cli":
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = (node.end_lineno or node.lineno) - node.lineno + 1
                    if length > MAX_CLI_FUNCTION:
                        problems.append(f"{module}: {node.name}() has {length} lines (more than {MAX_CLI_FUNCTION})")
        rows.append((module, lines, found))
        if lines > MAX_LINES and not is_script:
            problems.append(f"{module}: {lines} lines (more than {MAX_LINES})")
        for target, names in found:
            theirs = package_of(target, False)
            if own == "symode" and theirs in ("symode.bench", "symode.train") and module != "symode.__main__":
                problems.append(f"{module}: the core imports {theirs} ({target})")
            crossing = theirs != own
            private = [n for n in names if is_private(n)]
            if crossing and (is_private(target) or private):
                problems.append(
                    f"{module}: imports private {target}{' ' + str(private) if private else ''} across packages"
                )
    width = max(len(r[0]) for r in rows)
    for module, lines, found in rows:
        targets = sorted({t for t, _ in found})
        print(f"{module:<{width}}  {lines:4d}  {', '.join(targets) or '-'}")
    print()
    if problems:
        print("rules broken:")
        for p in problems:
            print("  " + p)
        return 1
    print(
        f"ok: the core never imports symode.bench or symode.train; no module over {MAX_LINES} lines; no function "
        f"of the CLI over {MAX_CLI_FUNCTION} lines; no private name imported across packages ({len(rows)} files)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
