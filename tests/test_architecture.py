"""The package layout, read from the source with `ast` (nothing is imported): stages, imports, sizes.

The stage order and the allowed crossings are parsed from docs/architecture.md, so the document and
the code cannot drift apart: an import that the document does not allow fails here, naming the file
and the import.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "nnlite"
ARCHITECTURE_DOC = REPO / "docs" / "architecture.md"
COMMANDS = "commands"  # the thin entry modules at the top of nnlite/: they may import any stage
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_TOP_LEVEL_MODULES = 20


@dataclass(frozen=True)
class Import:
    source: str  # importing module, e.g. "nnlite.training.trainer"
    target: str  # imported module, e.g. "nnlite.network.loss"
    line: int

    def __str__(self) -> str:
        return f"{module_path(self.source)}:{self.line} imports {self.target}"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_path(name: str) -> str:
    path = REPO.joinpath(*name.split("."))
    return str((path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).relative_to(REPO))


def all_modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p): p for p in sorted(root.rglob("*.py"))}


def resolve_target(module: str, name: str, modules: dict[str, Path]) -> str:
    """`from module import name`: the submodule when `name` is one, else the module itself."""
    return f"{module}.{name}" if f"{module}.{name}" in modules else module


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every nnlite import of a module, at any depth (lazy imports inside functions count too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [Import(name, a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "nnlite"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] == "nnlite":
            found += [Import(name, resolve_target(node.module, a.name, modules), node.lineno)
                      for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            pytest.fail(f"{module_path(name)}:{node.lineno}: relative import (nnlite imports are absolute)")
    return found


def import_graph(root: Path = PACKAGE) -> list[Import]:
    modules = all_modules(root)
    return [imp for name, path in modules.items() for imp in imports_of(name, path, modules)]


def documented_stage_order(doc: str) -> list[str]:
    """The line `Stage order: `a` → `b` → …` of docs/architecture.md."""
    match = re.search(r"^Stage order: (.+)$", doc, re.MULTILINE)
    assert match, f"{ARCHITECTURE_DOC} has no 'Stage order: …' line"
    return re.findall(r"`([\w.]+)`", match.group(1))


def documented_crossings(doc: str) -> set[tuple[str, str]]:
    """Rows `| `nnlite/x/y.py` | `nnlite.a.b` | why |` of the crossings table, as (source, target)."""
    rows = re.findall(r"^\| `(nnlite/[\w/]+\.py)` \| `(nnlite[\w.]+)` \|", doc, re.MULTILINE)
    return {(path[:-3].replace("/", "."), target) for path, target in rows}


def stage_of(module: str) -> str:
    """nnlite.<stage>.x → stage; nnlite.plans → plans; nnlite.<command> → commands."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__init__", "__main__"):
        return COMMANDS
    if (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return "plans" if parts[1] == "plans" else COMMANDS


def order_violations(imports: list[Import], order: list[str], crossings: set[tuple[str, str]]) -> list[str]:
    rank = {stage: i for i, stage in enumerate(order + [COMMANDS])}
    bad = {}  # one line per import statement, in file order
    for imp in imports:
        source, target = stage_of(imp.source), stage_of(imp.target)
        if rank[target] > rank[source] and (imp.source, imp.target) not in crossings:
            bad[str(imp)] = f"{imp} (stage '{source}' imports the later stage '{target}')"
    return list(bad.values())


def import_cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.source, set()).add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


# --- the rules on the real package ---------------------------------------------------------------

def test_stage_folders_are_the_documented_order():
    order = documented_stage_order(ARCHITECTURE_DOC.read_text())
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert sorted(s for s in order if s != "plans") == folders
    assert len(folders) - 1 >= 6  # common/ is plumbing, the rest are pipeline stages


def test_every_stage_folder_says_what_it_takes_and_gives():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 150, f"{init.relative_to(REPO)}: needs a paragraph docstring"


def test_imports_follow_the_stage_order():
    doc = ARCHITECTURE_DOC.read_text()
    bad = order_violations(import_graph(), documented_stage_order(doc), documented_crossings(doc))
    assert not bad, "imports against docs/architecture.md's stage order:\n" + "\n".join(bad)


def test_every_documented_crossing_exists():
    """A crossing the code no longer makes must leave the document too."""
    made = {(imp.source, imp.target) for imp in import_graph()}
    stale = documented_crossings(ARCHITECTURE_DOC.read_text()) - made
    assert not stale, f"docs/architecture.md lists crossings the code does not make: {sorted(stale)}"


def imports_of_stage_from(imports: list[Import], stages: tuple[str, ...], forbidden: str) -> list[str]:
    return [str(imp) for imp in imports if stage_of(imp.source) in stages and stage_of(imp.target) == forbidden]


def test_inference_and_evaluation_never_import_training():
    """The final validation lives in training and calls inference, never the other way round."""
    bad = imports_of_stage_from(import_graph(), ("inference", "evaluation"), "training")
    assert not bad, "inference/evaluation import training:\n" + "\n".join(bad)


def test_an_inference_import_of_training_is_named():
    imports = [Import("nnlite.inference.predictor", "nnlite.training.checkpoints", 3)]
    assert imports_of_stage_from(imports, ("inference", "evaluation"), "training") == [
        "nnlite/inference/predictor.py:3 imports nnlite.training.checkpoints"]


def spelled_in(literal: str) -> list[str]:
    """The modules of nnlite whose source holds the string literal `literal` (docstrings excepted)."""
    found = []
    for name, path in all_modules().items():
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}
        if any(isinstance(node, ast.Constant) and node.value == literal and id(node) not in docstrings
               for node in ast.walk(tree)):
            found.append(name)
    return found


@pytest.mark.parametrize("name", ["results", "plans.json", "splits.json", "fingerprint.json", "best.json",
                                  "postprocessing.json"])
def test_the_work_folder_layout_is_spelled_in_one_module(name):
    """Every path inside WORK is named by nnlite.common.layout; no other module spells it."""
    assert spelled_in(name) == ["nnlite.common.layout"]


def test_no_import_cycles():
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" ↔ ".join(c) for c in cycles)


def test_modules_and_functions_are_small():
    too_long = []
    for name, path in all_modules().items():
        source = path.read_text()
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{module_path(name)}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{module_path(name)}:{node.lineno} {node.name}(): {length} lines")
    assert not too_long, "over the size limits:\n" + "\n".join(too_long)


def test_the_top_level_holds_few_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    assert "plans.py" in top and "__main__.py" in top


def test_no_module_names_differ_only_by_a_suffix():
    """`prediction` beside `prediction_models`, `train` beside `train_config`: names that explain
    nothing. Compared by underscore-separated words, across the whole package."""
    stems = {p.stem for p in PACKAGE.rglob("*.py") if not p.stem.startswith("__")}
    words = {stem: stem.split("_") for stem in stems}
    clashes = sorted((a, b) for a in stems for b in stems
                     if a != b and words[b][:len(words[a])] == words[a])
    assert not clashes, f"module names that differ only by a suffix: {clashes}"


def test_geometry_is_pure_arithmetic_without_torch():
    """The planner reads network/geometry.py: importing it (or the planner) must not import torch."""
    tree = ast.parse((PACKAGE / "network" / "geometry.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "torch" not in imported
    code = ("import sys, nnlite.network.geometry, nnlite.planning.work_folder; "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def is_module(parts: list[str]) -> bool:
    path = REPO.joinpath(*parts)
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def package_api_names() -> set[str]:
    """The names `nnlite/__init__.py` exports lazily (`nnlite.Predictor`): its `_API_NAMES` tuple."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    return {element.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "_API_NAMES" for t in node.targets)
            for element in node.value.elts}


def test_documented_paths_exist():
    """Every `nnlite/…` path named in README.md and docs/*.md is a real file or folder, and so is
    every `<stage>/<module>.py` written relative to the package (as docs/architecture.md does);
    `nnlite.<name>` is a module or a name the package exports (`nnlite.Predictor`)."""
    stages = "|".join(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    exported = package_api_names()
    missing = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text()
        for path in re.findall(r"(?<![\w/.-])(nnlite/[\w/.-]*[\w/])", text):
            if not (REPO / path).exists():
                missing.append(f"{doc.name}: {path}")
        for path in re.findall(rf"(?<![\w/.-])((?:{stages})/\w+\.py)", text):
            if not (PACKAGE / path).exists():
                missing.append(f"{doc.name}: {path} (under nnlite/)")
        for dotted in re.findall(r"(?<![\w/.-])(nnlite(?:\.\w+)+)", text):
            parts = dotted.split(".")  # a module, or a module's attribute (nnlite.x.name)
            if len(parts) == 2 and parts[1] in exported:
                continue
            if not any(is_module(parts[:n]) for n in {len(parts), max(len(parts) - 1, 2)}):
                missing.append(f"{doc.name}: {dotted} (no such module)")
    assert not missing, "paths in the docs that do not exist:\n" + "\n".join(missing)


# --- the checks catch what they are for ----------------------------------------------------------

def write_package(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / "nnlite" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "nnlite"


def test_a_circular_import_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    package = write_package(tmp_path, {
        "__init__.py": "", "data/__init__.py": "", "training/__init__.py": "",
        "data/a.py": "from nnlite.data.b import x\n",
        "data/b.py": "def x():\n    from nnlite.data import a\n",
        "training/c.py": "from nnlite.data.a import x\n"})
    assert import_cycles(import_graph(package)) == [["nnlite.data.a", "nnlite.data.b"]]


def test_an_import_against_the_order_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "nnlite")
    package = write_package(tmp_path, {
        "__init__.py": "", "train.py": "from nnlite.training.c import y\n",
        "data/__init__.py": "", "training/__init__.py": "", "training/c.py": "y = 1\n",
        "data/a.py": "import nnlite.training.c\n"})
    imports = import_graph(package)
    bad = order_violations(imports, ["data", "training"], set())
    assert bad == ["nnlite/data/a.py:1 imports nnlite.training.c (stage 'data' imports the later stage "
                   "'training')"]
    assert order_violations(imports, ["data", "training"], {("nnlite.data.a", "nnlite.training.c")}) == []
