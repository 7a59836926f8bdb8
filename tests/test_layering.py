"""Imports point one way: the library never pulls in the experiment layer's dependencies."""

import subprocess
import sys
from pathlib import Path


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_cat_imports_no_experiment_dependencies():
    loaded = _loaded_after("import cat")
    assert not loaded & {"hydra", "omegaconf", "wandb", "torchmetrics", "experiments", "pandas", "matplotlib"}


def test_cat_core_imports_no_diffusers():
    core = Path(__file__).resolve().parents[1] / "cat" / "core"
    loaded = _loaded_after(
        "import importlib.util as u; "
        f"s = u.spec_from_file_location('catcore', r'{core / '__init__.py'}', submodule_search_locations=[r'{core}']); "
        "m = u.module_from_spec(s); sys.modules['catcore'] = m; s.loader.exec_module(m)"
    )
    assert "torch" in loaded and "catcore" in loaded
    assert not loaded & {"diffusers", "transformers", "cat"}


# What each part may import, for imports to point one way: run.py -> experiments -> cat (its API, and the
# model facts of cat.families, public) -> cat.methods -> cat.engine / cat.families -> cat.core -> torch.
# Inside the harness, each layer imports only the layers below it (docs/architecture.md, "The harness").
HARNESS = ("base", "prompts", "metrics", "run", "compare", "reports", "tasks", "lifecycle")  # bottom to top
LIBRARY = {"cat", "cat.families"}  # what the harness may import of the library: its API and the model facts
ALLOWED = {
    "cat.core": {"cat.core"},
    "cat.families": {"cat.families"},
    "cat.engine": {"cat.engine", "cat.families", "cat.core"},
    "cat.methods": {"cat.methods", "cat.engine", "cat.families", "cat.core"},
    "cat.api": {"cat.api", "cat.methods", "cat.engine", "cat.families", "cat.core"},
    "cat": {"cat", "cat.api", "cat.methods", "cat.engine", "cat.families", "cat.core"},  # __init__, testing
    **{f"experiments.{layer}": {f"experiments.{below}" for below in HARNESS[: i + 1]} | LIBRARY
       for i, layer in enumerate(HARNESS)},
    "experiments": set(),  # the package's __init__: the layers' overview, no import
    "run": {f"experiments.{layer}" for layer in HARNESS},
}
ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "run.py", *sorted((ROOT / "cat").rglob("*.py")), *sorted((ROOT / "experiments").rglob("*.py"))]


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _part(module: str) -> str:
    for part in sorted(ALLOWED, key=len, reverse=True):
        if module == part or module.startswith(part + "."):
            return part
    return module.split(".")[0]


def _imports(path: Path) -> set[str]:
    """The project modules `path` imports, at module level or inside a function (relative imports resolved;
    `from p import m` as p.m when m is a module)."""
    import ast

    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".rstrip(".")
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                is_module = (ROOT / sub.replace(".", "/")).with_suffix(".py").exists() or (ROOT / sub.replace(".", "/")).is_dir()
                found.add(sub if is_module else base)
    return {m for m in found if m.split(".")[0] in ("cat", "experiments", "run") and m != module}


def test_imports_point_one_way():
    """Every import of run.py, cat/ and experiments/ (module-level and inside functions) stays in its part or
    goes down: the library's rules, and the harness's layers (a layer imports itself and those below it)."""
    wrong = []
    for path in FILES:
        allowed = ALLOWED[_part(_module(path))]
        wrong += [f"{path.relative_to(ROOT)} imports {m}" for m in sorted(_imports(path)) if _part(m) not in allowed]
    assert not wrong, "\n".join(wrong)


def test_every_harness_module_is_in_a_layer():
    """No module sits beside the layers, where the table above would not place it."""
    loose = [str(p.relative_to(ROOT)) for p in (ROOT / "experiments").glob("*.py") if p.name != "__init__.py"]
    layers = {p.name for p in (ROOT / "experiments").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert not loose and layers == set(HARNESS), (loose, sorted(layers))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each is an import circle."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    """No two modules of run.py, cat/ and experiments/ import each other, directly or through others, counting
    the imports made inside functions too: a circle cannot hide behind a function-level import."""
    graph = {_module(path): _imports(path) for path in FILES}
    assert not cycles(graph), cycles(graph)


def test_the_circle_check_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
