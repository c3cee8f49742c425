"""The house rules of didact_core, checked on its source.

* Stages depend one way: ground ← ingest ← data ← learn ← serve and testbed; power may
  use ingest and data; cluster may use learn and below, and only serve, testbed and act
  use cluster. No import circles, not even through function-local imports.
* No Dagster in didact_core; imports at the top of a module except optional heavy
  libraries, each lazy import with a one-line reason.
* Modules stay small enough to read (≤ ~500 lines) and functions short (≤ ~80 lines).
* Every path that a code version names exists.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "didact_core"

GROUND = {"config", "config_forms", "errors", "schema", "versioning", "engine", "procs", "legacy", "__init__"}
#: what each stage may import (besides itself)
ALLOWED = {
    "ground": {"ground"},
    "ingest": {"ground"},
    "data": {"ground", "ingest"},
    "learn": {"ground", "ingest", "data"},
    "power": {"ground", "ingest", "data"},
    "cluster": {"ground", "ingest", "data", "learn"},
    "serve": {"ground", "ingest", "data", "learn", "power", "cluster"},
    "testbed": {"ground", "ingest", "data", "learn", "power", "cluster"},
    "act": {"ground", "ingest", "data", "learn", "power", "cluster"},
}
#: third-party libraries that may be imported inside a function (start-up time), with a reason
LAZY_OK = {"torch", "mlflow", "sklearn", "matplotlib", "pyarrow", "pynvml", "scipy", "requests", "cramjam"}
MAX_MODULE_LINES = 520
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(CORE.rglob("*.py")):
        rel = f.relative_to(CORE).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(("didact_core",) + parts)] = f
    return out


MODULES = _modules()


def _stage(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in GROUND:
        return "ground"
    return parts[1]


def _imports(f: Path) -> list[tuple[str, int, bool]]:
    """(imported didact_core module, line, at module top) for every import in ``f``."""
    tree = ast.parse(f.read_text())
    top = {id(n) for n in tree.body}
    for n in tree.body:  # `if TYPE_CHECKING:` and try/except at top level count as top
        if isinstance(n, (ast.If, ast.Try)):
            top |= {id(c) for c in ast.walk(n)}
    out = []
    for n in ast.walk(tree):
        names = []
        if isinstance(n, ast.Import):
            names = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom) and n.module:
            names = [n.module] + [f"{n.module}.{a.name}" for a in n.names]
        for name in names:
            if name.startswith("didact_core"):
                while name not in MODULES and "." in name:
                    name = name.rsplit(".", 1)[0]
                out.append((name, n.lineno, id(n) in top))
    return out


def _graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, f in MODULES.items():
        for dep, _line, _top in _imports(f):
            if dep != m and not m.startswith(dep + ".") and dep != "didact_core":
                g[m].add(dep)
    return g


def test_stages_depend_one_way():
    wrong = []
    for m, f in MODULES.items():
        for dep, line, _top in _imports(f):
            a, b = _stage(m), _stage(dep)
            if a != b and b not in ALLOWED[a]:
                wrong.append(f"{f.relative_to(CORE.parent)}:{line} {a} imports {b} ({dep})")
    assert not wrong, "upward or sideways imports:\n" + "\n".join(wrong)


def test_no_import_circles():
    g = _graph()
    cycles, state, stack = [], {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(g[m]):
            if state.get(d) == 1:
                cycles.append(" → ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_no_dagster_in_core():
    found = [
        f"{f.relative_to(CORE.parent)}"
        for f in MODULES.values()
        if re.search(r"^\s*(import dagster|from dagster)", f.read_text(), re.M)
    ]
    assert not found, f"didact_core must not import dagster: {found}"


def test_imports_at_the_top_except_heavy_libraries_with_a_reason():
    late = []
    for f in MODULES.values():
        lines = f.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        top = {id(n) for n in tree.body}
        for n in tree.body:
            if isinstance(n, (ast.If, ast.Try)):
                top |= {id(c) for c in ast.walk(n)}
        for n in ast.walk(tree):
            if not isinstance(n, (ast.Import, ast.ImportFrom)) or id(n) in top:
                continue
            root = (n.names[0].name if isinstance(n, ast.Import) else (n.module or "")).split(".")[0]
            where = f"{f.relative_to(CORE.parent)}:{n.lineno}"
            if root not in LAZY_OK:
                late.append(f"{where} imports {root} inside a function")
                continue
            # the reason: a comment on the line itself or on the line above
            around = " ".join(lines[max(0, n.lineno - 2): n.lineno])
            if "#" not in around:
                late.append(f"{where} lazy import of {root} without a one-line reason")
    assert not late, "\n".join(late)


def test_modules_and_functions_stay_small():
    big = []
    for f in MODULES.values():
        text = f.read_text()
        n = text.count("\n")
        if n > MAX_MODULE_LINES:
            big.append(f"{f.relative_to(CORE.parent)}: {n} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    big.append(f"{f.relative_to(CORE.parent)}:{node.lineno} {node.name}() {length} lines")
    assert not big, "\n".join(big)


def test_every_code_version_path_exists():
    from didact_core.versioning import code_version

    calls = []
    for f in list(MODULES.values()):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "code_version":
                calls.append((f, [a.value for a in node.args if isinstance(a, ast.Constant)]))
    assert calls, "no code_version(...) calls found: the check looks in the wrong place"
    missing = [
        f"{f.relative_to(CORE.parent)}: {p}"
        for f, paths in calls
        for p in paths
        if not ((CORE / p).is_dir() or (CORE / p).with_suffix(".py").is_file())
    ]
    assert not missing, f"code_version names paths that do not exist: {missing}"
    with pytest.raises(Exception, match="no_such_module"):
        code_version("no_such_module")
