"""The layer contract: which of the project's packages may import which (function-level imports included).

The folder tree is the architecture (docs/architecture.md); this test keeps it so. A module may import its own
layer and the layers listed below it, never one above: inside the library

    base (aum.config, aum.atomic)  <  audio  <  data  <  train
    base  <  ops  <  modules  <  models  <  checkpoint          (checkpoint also reads audio's feature presets)
    embed (windows and pooling over any encoder) sits on audio and models

and the applications sit above the whole library: pretrain and eval, then hear_api (which writes eval's result
records), then slurm, which launches them all. The test also fails on any import cycle between modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("aum", "pretrain", "eval", "hear_api", "slurm")

# layer -> the layers it may import (besides itself). Layers are module-name prefixes; the longest match wins.
ALLOWED: dict[str, set[str]] = {
    "aum.config": {"aum.atomic"},                     # save_config writes through the one atomic writer
    "aum.atomic": set(),
    "aum.audio": {"aum.config", "aum.atomic"},
    "aum.data": {"aum.config", "aum.atomic", "aum.audio"},
    "aum.ops": set(),
    "aum.modules": {"aum.ops"},
    "aum.models": {"aum.config", "aum.ops", "aum.modules"},
    "aum.checkpoint": {"aum.config", "aum.atomic", "aum.audio", "aum.ops", "aum.modules", "aum.models"},
    "aum.train": {"aum.config", "aum.atomic", "aum.audio", "aum.data"},
    "aum.embed": {"aum.config", "aum.audio", "aum.ops", "aum.modules", "aum.models", "aum.checkpoint"},
}
LIBRARY = {"aum"}
ALLOWED_APPS: dict[str, set[str]] = {
    "aum": {"aum"},                                   # the package root and its CLIs: anything in the library
    "pretrain": LIBRARY,
    "eval": LIBRARY,
    "hear_api": LIBRARY | {"eval"},
    "slurm": LIBRARY | {"pretrain", "eval", "hear_api"},
}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            rel = f.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            mods[".".join(parts)] = f
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")
                keep = len(parts) - node.level + (1 if path.name == "__init__.py" else 0)
                base = ".".join(parts[:keep] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _layer(module: str, table) -> str | None:
    best = None
    for layer in table:
        if (module == layer or module.startswith(layer + ".")) and (best is None or len(layer) > len(best)):
            best = layer
    return best


MODS = _modules()
GRAPH = {m: _imports(m, f, MODS) for m, f in MODS.items()}


def test_every_library_module_has_a_layer():
    loose = [m for m in MODS if m.startswith("aum.") and _layer(m, ALLOWED) is None
             and m not in ("aum.__main__", "aum.cli", "aum.demo")]
    assert not loose, f"modules of aum outside every layer (add them to a subpackage or to ALLOWED): {loose}"


def test_no_module_imports_a_layer_above_its_own():
    bad = []
    for m, targets in GRAPH.items():
        for t in targets:
            top_m, top_t = m.split(".")[0], t.split(".")[0]
            if top_m != top_t or top_m != "aum":
                if top_t not in ALLOWED_APPS[top_m] and top_t != top_m:
                    bad.append(f"{m} -> {t}")
                continue
            lm, lt = _layer(m, ALLOWED), _layer(t, ALLOWED)
            if lm is None or lm == lt:
                continue            # the package root and its CLIs sit on top; within one layer anything goes
            if lt is None or lt not in ALLOWED[lm]:    # the root / the CLIs are above every layer
                bad.append(f"{m} ({lm}) -> {t} ({lt})")
    assert not bad, "imports against the layer order:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    # a package's __init__ importing its own submodules (and they importing the package) is not a cycle
    graph = {m: {t for t in ts if not (MODS[m].name == "__init__.py" and t.startswith(m + "."))
                 and not (MODS[t].name == "__init__.py" and m.startswith(t + "."))} for m, ts in GRAPH.items()}
    index, low, on, stack, cycles, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("bad", ["aum.models.aum -> aum.checkpoint", "aum.audio.features -> aum.train.engine"])
def test_the_contract_catches_an_upward_import(bad):
    m, t = bad.split(" -> ")
    assert _layer(t, ALLOWED) not in ALLOWED[_layer(m, ALLOWED)]
