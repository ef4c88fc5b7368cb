"""vstore's modules depend on each other one way: no import cycle (function-level imports
count), no private name imported across modules, no lazy module ``__getattr__``, and each
module imports on its own in a fresh interpreter, whichever comes first. The packages too:
cli -> classifiers -> encoders -> vstore, and vstore imports no web framework."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "vstore"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def _imports(module: str) -> list[tuple[str, list[str], int]]:
    """(imported sibling, names imported from it, line) for every import in ``module``, at
    any depth (module level, functions, ``if TYPE_CHECKING`` blocks)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if node.level == 1 and node.module:  # from .x import y
                out.append((node.module.split(".")[0], names, node.lineno))
            elif node.level == 1:  # from . import x
                out += [(n, [], node.lineno) for n in names]
            elif node.level == 0 and node.module and node.module.split(".")[0] == "vstore":
                parts = node.module.split(".")
                out += [(parts[1], names, node.lineno)] if len(parts) > 1 else [(n, [], node.lineno) for n in names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "vstore" and len(parts) > 1:
                    out.append((parts[1], [], node.lineno))
    return [(m, names, line) for m, names, line in out if m in MODULES]


def _graph() -> dict[str, set[str]]:
    return {m: {dep for dep, _, _ in _imports(m)} for m in MODULES}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` as a path (first == last), or [] when it is acyclic."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(m: str) -> list[str]:
        state[m] = 1
        stack.append(m)
        for dep in sorted(graph[m]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return []

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return []


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) in (["a", "b", "c", "a"],)
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a"}}) == []


def test_vstore_modules_import_one_way():
    cycle = _cycle(_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_index_modules_layering():
    """The index stack from the bottom: index_faiss, index, index_build, index_load, then exact
    and search; the store knows none of them."""
    g = _graph()
    assert g["index_faiss"] <= {"errors"}
    assert not g["store"] & {"index", "index_faiss", "index_build", "index_load", "exact", "search", "split"}
    assert "index_load" not in g["index_build"] and "index_build" in g["index_load"]


def test_no_private_names_cross_modules_and_no_lazy_reexports():
    crossing = [f"vstore/{m}.py:{line} imports {n} from {dep}"
                for m in MODULES for dep, names, line in _imports(m) for n in names if n.startswith("_")]
    assert not crossing, crossing
    lazy = [m for m in MODULES
            if any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__"
                   for n in ast.parse((PACKAGE / f"{m}.py").read_text(encoding="utf-8")).body)]
    assert not lazy, f"module-level __getattr__ in {lazy}"


_FORK_EACH = """
import os, sys, traceback
import faiss, h5py, numpy, tqdm  # third-party modules loaded once; every child starts without vstore
modules = sys.argv[1:]
failed = []
for m in modules:
    pid = os.fork()
    if pid == 0:
        try:
            __import__("vstore." + m)
            for other in modules:
                __import__("vstore." + other)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1]:
        failed.append(m)
print("FAILED", *failed)
sys.exit(1 if failed else 0)
"""


def test_each_module_imports_first_in_a_fresh_interpreter():
    """Import each module first (the others after it) in an interpreter that has not imported
    vstore yet: a cycle hidden by import order would fail one of them."""
    r = subprocess.run([sys.executable, "-c", _FORK_EACH, *MODULES], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]


# -- the packages: cli -> classifiers -> encoders -> vstore ------------------------------------------
PACKAGES = ("vstore", "encoders", "classifiers", "cli")
# what each package must not import, at any depth (function-level and TYPE_CHECKING imports count)
FORBIDDEN = {
    "vstore": {"encoders", "classifiers", "cli", "fastapi", "uvicorn", "starlette"},
    "encoders": {"classifiers", "cli"},
    "classifiers": {"cli"},
}


def imported_packages(source: str, module: str) -> list[tuple[str, int]]:
    """(top-level package, line) of every import in ``source``, the code of dotted ``module``
    (``pkg.sub.mod``, ``pkg.sub.__init__``), at any depth: plain and relative imports
    resolved to absolute names, and ``importlib.import_module`` / ``__import__`` of a constant."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(a.name.split(".")[0], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[:len(module.split(".")) - node.level]
                name = ".".join(base + ([node.module] if node.module else []))
                out.append(((name or "<beyond the top package>").split(".")[0], node.lineno))
            elif node.module:
                out.append((node.module.split(".")[0], node.lineno))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Name) and node.func.id in ("__import__", "import_module"))
                   or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"))):
            out.append((node.args[0].value.split(".")[0], node.lineno))
    return out


def _package_modules(package: str) -> list[tuple[Path, str]]:
    """(file, dotted module name) of every module of ``package``, subpackages included."""
    out = []
    for p in sorted((REPO / package).rglob("*.py")):
        parts = list(p.relative_to(REPO).with_suffix("").parts)
        out.append((p, ".".join(parts)))
    return out


def test_import_finder_sees_every_kind_of_import():
    src = ("import cli.main\nfrom fastapi import FastAPI\nfrom ..encoders import x\nfrom . import y\n"
           "def f():\n    import uvicorn\n    importlib.import_module('starlette.routing')\n"
           "    __import__('classifiers')\n")
    assert sorted(p for p, _ in imported_packages(src, "vstore.sub.mod")) == \
        ["classifiers", "cli", "fastapi", "starlette", "uvicorn", "vstore", "vstore"]
    assert [p for p, _ in imported_packages("from ..cli import serve\n", "vstore.mod")] == ["cli"]
    assert [p for p, _ in imported_packages("from .x import y\n", "vstore.__init__")] == ["vstore"]


def test_packages_import_one_way_and_vstore_no_web_framework():
    """vstore imports none of encoders, classifiers, cli (nor FastAPI, uvicorn, Starlette: the
    server is cli/serve/); encoders imports neither classifiers nor cli; classifiers not cli;
    so nothing but cli imports cli."""
    bad = []
    for package, forbidden in FORBIDDEN.items():
        modules = _package_modules(package)
        assert len(modules) > 3, f"no modules found under {package}/"
        for path, module in modules:
            for imported, line in imported_packages(path.read_text(encoding="utf-8"), module):
                if imported in forbidden:
                    bad.append(f"{path.relative_to(REPO)}:{line} imports {imported}")
    assert not bad, bad
