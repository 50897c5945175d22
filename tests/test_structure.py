"""The package's shape: no import cycles, small modules, one AUROC, thin __init__s, stages that borrow only through
the artifacts layer, figures in views modules, notebooks that write nothing."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

from lanic_nb.run_notebooks import list_notebooks

PACKAGE = Path(__file__).resolve().parent.parent / "lanic_nb"
MAX_LINES = 400
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "notebooks" not in p.parts)


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def internal_imports(path: Path) -> set[str]:
    """Every lanic_nb module this file imports, at module level or inside functions."""
    tree = ast.parse(path.read_text())
    names = {module_name(p) for p in MODULES}
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from lanic_nb.x import y` imports lanic_nb.x, or the submodule lanic_nb.x.y when there is one
            targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in names else node.module
                       for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in names and t != "lanic_nb"}
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): internal_imports(p) for p in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_imports():
    graph = import_graph()
    assert "lanic_nb.io" in graph["lanic_nb.rundir"], "the import parser misses a module-level import"
    assert sum(len(v) for v in graph.values()) > 50


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_module_is_small(path: Path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{module_name(path)} has {n} lines: split it along its sections"


@pytest.mark.parametrize("path", [p for p in MODULES if p.name == "__init__.py" and p.parent != PACKAGE],
                         ids=lambda p: module_name(p))
def test_subpackage_init_holds_only_a_docstring(path: Path):
    body = ast.parse(path.read_text()).body
    assert body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), \
        f"{module_name(path)}: open with a docstring saying what the subpackage holds"
    extra = [n for n in body[1:] if not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
    assert not extra, f"{module_name(path)}: no imports or code in package __init__ (import the modules)"


def test_no_stage_imports_another_stage():
    """What a stage needs of an earlier one comes from lanic_nb.artifacts or a domain module, never its stage."""
    offenders = []
    for mod, targets in import_graph().items():
        if mod == "lanic_nb":  # the public API names every stage
            continue
        home = mod.rsplit(".", 1)[0]
        offenders += [f"{mod} -> {t}" for t in targets if t.endswith(".stage") and t.rsplit(".", 1)[0] != home]
    assert not offenders, f"stage-to-stage imports (use lanic_nb.artifacts): {offenders}"


def test_the_chest_xray_core_never_imports_mammi_or_pathology():
    apart = ("lanic_nb.mammi", "lanic_nb.pathology")
    offenders = [f"{mod} -> {t}" for mod, targets in import_graph().items() if mod != "lanic_nb"
                 and not mod.startswith(apart) for t in targets if t.startswith(apart)]
    assert not offenders, offenders


def test_the_package_never_imports_its_own_public_api():
    """Modules import modules; ``from lanic_nb import X`` inside the package would load every stage."""
    names = {module_name(p) for p in MODULES}
    offenders = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "lanic_nb" and path != PACKAGE / "__init__.py":
                offenders += [f"{module_name(path)}: {a.name}" for a in node.names if f"lanic_nb.{a.name}" not in names]
    assert not offenders, offenders


def test_figures_live_in_views_modules():
    offenders = [f"{module_name(p)}.{n.name}" for p in MODULES if p.name != "views.py"
                 for n in ast.parse(p.read_text()).body
                 if isinstance(n, ast.FunctionDef) and n.name.startswith("plot_")]
    assert not offenders, f"plot functions outside a views module: {offenders}"


ROC_CODE = re.compile(r"roc_auc_score|average_precision_score|roc_curve\(|mannwhitneyu")


def test_one_auroc_implementation():
    """Only lanic_nb/metrics.py computes AUROC, AUPRC and ROC curves; everything else calls it."""
    offenders = [module_name(p) for p in MODULES
                 if p.name != "metrics.py" or p.parent != PACKAGE
                 if ROC_CODE.search(p.read_text())]
    assert not offenders, f"AUROC/AUPRC computed outside lanic_nb.metrics: {offenders}"


# What a cell that writes an artifact looks like: the stage functions do that, notebooks only show.
WRITES = re.compile(
    r"record_metrics|\.to_parquet\(|\.to_csv\(|\.to_json\(|save_file\(|torch\.save\(|\.savefig\(|"
    r"write_(table|json|figure|text|bytes)\(|open\([^)]*['\"][wa]b?['\"]|\.save\(|np\.save"
)


@pytest.mark.parametrize("path", list_notebooks(), ids=lambda p: p.stem)
def test_notebooks_write_no_artifacts(path: Path):
    nb = nbformat.read(path, as_version=4)
    bad = [c.source.splitlines()[0][:80] for c in nb.cells if c.cell_type == "code" and WRITES.search(c.source)]
    assert not bad, f"{path.name}: cells write artifacts (move it into the stage function): {bad}"


@pytest.mark.parametrize("path", list_notebooks(), ids=lambda p: p.stem)
def test_notebook_calls_its_stage_function(path: Path):
    code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    assert re.search(r"\brun_[a-z]+\(run_dir", code), f"{path.name} does not call a run_<stage>(run_dir, ...)"
    assert f'start_notebook(run_dir, "{path.stem}")' in code, f"{path.name}: call start_notebook first"
    assert "plt.show()" not in code, f"{path.name}: display figures with lanic_nb.notebook.show(fig)"
