"""The package's imports run one way (SPEC section 2): pipelines -> evaluation, training -> judges, lm, models,
data -> losses -> ops -> kernels. Read from the source (every import, function-level ones included), so a
new module is covered without a list: no package imports one above it, no module imports another
module's private name (or reads one through an imported module), and there is no import circle."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "rdpo_fast"

BASE = {"io", "errors", "compat", "preemption", "run_lock"}  # leaf utilities: any layer may use them, they use no layer
# What each layer may import besides itself and BASE.
ALLOWED = {
    "kernels": set(),
    "oracle": set(),
    "ops": {"kernels", "oracle"},
    "losses": {"ops", "kernels", "oracle"},
    "models": set(),
    "data": set(),
    "lm": {"models"},
    "judges": {"lm", "models", "data"},
    "training": {"judges", "lm", "models", "data", "losses", "ops"},
    "evaluation": {"judges", "lm", "models", "data", "losses", "ops"},
    "pipelines": {"evaluation", "training", "judges", "lm", "models", "data", "losses", "ops"},
    "integrations": {"models", "losses", "ops"},
    "io": set(), "errors": set(), "compat": set(), "preemption": set(), "run_lock": set(),
    "compile_report": {"kernels"},
}
TOP = {"__init__", "__main__", "cli"}  # the package's front doors: they may import any layer


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


MODULES = _modules()


def _layer(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _imports(module: str, path: Path):
    """(imported module, imported name or None, line) for every import of an rdpo_fast module, and the
    private attributes read through imported modules."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("rdpo_fast"):
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in MODULES or sub.startswith("rdpo_fast.kernels."):
                    found.append((sub, None, node.lineno))
                    aliases[a.asname or a.name] = sub
                else:
                    found.append((target, a.name, node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("rdpo_fast"):
                    found.append((a.name, None, node.lineno))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append((aliases[node.value.id], node.attr, node.lineno))
    return found


def test_layers_import_only_downwards():
    bad = []
    for module, path in MODULES.items():
        layer = _layer(module)
        if layer in TOP:
            continue
        allowed = ALLOWED[layer] | BASE | {layer}
        for target, _, line in _imports(module, path):
            if _layer(target) not in allowed:
                bad.append(f"{path.relative_to(PKG.parent)}:{line} ({layer}) imports {target}")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_private_name_crosses_a_module():
    bad = []
    for module, path in MODULES.items():
        for target, name, line in _imports(module, path):
            leaf = target.rsplit(".", 1)[-1]
            private_module = leaf.startswith("_") and not leaf.startswith("__")
            if (name and name.startswith("_") and not name.startswith("__") and target != module) or private_module:
                bad.append(f"{path.relative_to(PKG.parent)}:{line} uses {target}.{name or ''}".rstrip("."))
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def test_no_import_circle():
    graph = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target, _, _ in _imports(module, path):
            if target in MODULES and target != module:
                graph[module].add(target)
    # Tarjan's strongly connected components: any with more than one module is a circle.
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_the_checks_see_the_whole_package():
    # A guard against a silent pass: the walk finds the layers and real imports.
    layers = {_layer(m) for m in MODULES}
    assert {"ops", "losses", "training", "pipelines", "evaluation", "judges", "lm", "models", "data"} <= layers
    assert set(ALLOWED) | TOP >= layers, f"a layer with no rule: {layers - set(ALLOWED) - TOP}"
    assert any(t == "rdpo_fast.ops.logprobs" for t, _, _ in _imports("rdpo_fast.losses.fused",
                                                                      MODULES["rdpo_fast.losses.fused"]))
