"""The layer contract: imports point one way, cache <- classifier <- router <- training.

The import graph is read from the source (every ``import`` and ``from ... import``,
function-local and ``TYPE_CHECKING`` ones included), so a lazy import cannot hide
a dependency. import-linter would do the same, but it finds a package's modules by
walking the folder of its top-level package, and ``tierwise``'s subpackages live in
other folders (pyproject's package-dir), so the graph is built here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folder -> the import name it has; the order is the layering, lowest first.
LAYERS = {"cache": "tierwise.cache", "classifier": "tierwise.classifier", "router": "tierwise.router"}
TOP = {"training": "tierwise.training"}
FOLDERS = {**LAYERS, **TOP}
OLD_NAMES = ("router", "cache", "classifier", "training", "protos")


@dataclass(frozen=True)
class Edge:
    module: str  # importer
    path: Path
    line: int
    imported: str


def module_name(folder: Path, path: Path, package: str) -> str:
    parts = list(path.relative_to(folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def imports_of(path: Path, module: str) -> Iterator[Edge]:
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    docstrings = {
        id(scope.body[0].value)
        for scope in ast.walk(tree)
        if isinstance(scope, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and scope.body
        and isinstance(scope.body[0], ast.Expr)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Edge(module, path, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            yield Edge(module, path, node.lineno, target)
            for alias in node.names:  # `from pkg import submodule`
                yield Edge(module, path, node.lineno, f"{target}.{alias.name}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            # A module named in a string (`-m tierwise.training.cli`, import_module) is a dependency too.
            for word in node.value.replace(":", " ").split():
                if word.startswith("tierwise."):
                    yield Edge(module, path, getattr(node, "lineno", 0), word.rstrip(".,;'\")"))


def graph(root: Path) -> list[Edge]:
    edges: list[Edge] = []
    for folder, package in FOLDERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            edges.extend(imports_of(path, module_name(root / folder, path, package)))
    return edges


def violations(edges: list[Edge]) -> list[str]:
    order = list(LAYERS.values())
    found: dict[str, str] = {}  # one finding per import statement (`from a import b` is two edges)
    for e in edges:
        where = f"{e.path.relative_to(e.path.parents[len(e.module.split('.')) - 1])}:{e.line}"
        if e.imported.split(".")[0] in OLD_NAMES:
            found.setdefault(where, f"{where}: imports {e.imported!r}: the import names live under tierwise.")
            continue
        src = next((p for p in FOLDERS.values() if e.module == p or e.module.startswith(p + ".")), None)
        dst = next((p for p in FOLDERS.values() if e.imported == p or e.imported.startswith(p + ".")), None)
        if src is None or dst is None or src == dst or src in TOP.values():
            continue
        if dst in TOP.values() or order.index(dst) > order.index(src):
            found.setdefault(
                where,
                f"{where}: {src} may not import {e.imported} (layers: {' <- '.join(order)} <- training)",
            )
    return list(found.values())


def test_imports_point_one_way() -> None:
    assert violations(graph(ROOT)) == []


# router/'s top-level modules that run a request; its subpackages may use the shared vocabulary
# (config, types, errors, outcome, pricing, tokens, auth) but never these.
REQUEST_PATH = frozenset(
    {"server", "service", "pipeline", "validation", "wire", "rpc", "admin_rpc", "caching"}
    | {"call_progress", "upstream_errors", "accounting", "output_bound", "field_checks", "utf8_fields"}
    | {
        "rate_limiting",
        "tool_checks",
        "image_checks",
        "calls",
        "openai_http",
        "openai_schema",
        "openai_render",
        "key_rpc",
        "cpu_workers",
        "request_work",
        "deciding",
    }
)


def router_violations(edges: list[Edge], root: Path) -> list[str]:
    """Inside router/: no subpackage imports the request path, and subpackages import each other acyclically."""
    subpackages = {d.name for d in (root / "router").iterdir() if (d / "__init__.py").exists()}

    def part(module: str) -> str | None:
        parts = module.split(".")
        return parts[2] if len(parts) > 2 and parts[:2] == ["tierwise", "router"] else None

    found: set[str] = set()
    depends: dict[str, set[str]] = {s: set() for s in subpackages}
    for e in edges:
        src, dst = part(e.module), part(e.imported)
        if src not in subpackages or dst is None or dst == src:
            continue
        if dst in REQUEST_PATH:
            found.add(f"router/{src} imports the request path: {e.imported}")
        elif dst in subpackages:
            depends[src].add(dst)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in depends[start])

    found |= {
        f"router/{a} and router/{b} import each other"
        for a in depends
        for b in depends[a]
        if reaches(b, a, {b})
    }
    return sorted(found)


def test_router_subpackages_form_no_cycle_and_stay_off_the_request_path() -> None:
    assert router_violations(graph(ROOT), ROOT) == []


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {
                "router/ledger/a.py": "from tierwise.router.budgets.b import X\n",
                "router/budgets/b.py": "from tierwise.router.ledger.a import Y\n",
            },
            "router/budgets and router/ledger import each other",
        ),
        ({"router/ledger/a.py": "from tierwise.router.pipeline import Pipeline\n"}, "request path"),
    ],
)
def test_the_router_rules_catch_a_cycle_and_a_reach_up(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    root = _tree(tmp_path, {})
    for package in ("ledger", "budgets"):
        (root / "router" / package).mkdir()
        (root / "router" / package / "__init__.py").write_text("")
    for name, text in files.items():
        (root / name).write_text(text)
    found = router_violations(graph(root), root)
    assert found and expected in found[0], found


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for folder in FOLDERS:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "router/service.py",
            "def f():\n    from tierwise.training import train\n",
            "tierwise.router may not",
        ),
        ("classifier/model.py", "from tierwise.training.fit import fit\n", "tierwise.classifier may not"),
        ("cache/index.py", "import tierwise.router.config\n", "tierwise.cache may not"),
        ("cache/index.py", "from tierwise.classifier import features\n", "tierwise.cache may not"),
        (
            "cache/index.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tierwise.router import types\n",
            "tierwise.cache may not",
        ),
        ("router/demo.py", "ARGS = ['-m', 'tierwise.training.cli', 'serve']\n", "tierwise.router may not"),
        (
            "router/doc.py",
            '"""Prose may name tierwise.training."""\nX = "tierwise.training.demo:run"\n',
            "doc.py:2",
        ),
        ("router/x.py", "from router.config import Config\n", "the import names live under tierwise"),
    ],
)
def test_the_contract_catches_each_kind_of_violation(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    found = violations(graph(_tree(tmp_path, {name: text})))
    assert len(found) == 1 and expected in found[0], found


def test_allowed_directions_pass(tmp_path: Path) -> None:
    files = {
        "router/a.py": "from tierwise.cache import store\nfrom tierwise.classifier import model\n",
        "classifier/b.py": "from tierwise.cache.embedder import X\n",
        "training/c.py": "from tierwise.router.config import Config\n",
    }
    assert violations(graph(_tree(tmp_path, files))) == []


def test_every_package_folder_ships_in_the_wheel() -> None:
    """pyproject lists tierwise's packages by name (package-dir cannot be discovered): none may be missing."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {"tierwise", "tierwise.v1"}
    for folder, package in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            on_disk.add(module_name(ROOT / folder, init, package))
    assert on_disk == listed


def test_the_serving_commands_load_no_training_dependency() -> None:
    """`tierwise serve` imports the CLI and the server: neither may pull in what only training needs."""
    heavy = ("lightgbm", "matplotlib", "sklearn", "torch", "sentence_transformers", "transformers")
    code = (
        "import sys, tierwise.training.cli.app, tierwise.router.server, tierwise.router.service;"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
