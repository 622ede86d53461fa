"""The package graph is the one docs/architecture.md declares: every import (top-level or inside a function)
of a package is in its row's "may import" column, and the packages form no cycle."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "nvlm_train"
ROW = re.compile(r"^\| `(\w+)` \|.*\| ([^|]*)\|\s*$")


def declared() -> dict[str, set[str]]:
    """{package: packages it may import} from the table in docs/architecture.md."""
    allowed = {}
    for line in (REPO / "docs" / "architecture.md").read_text().splitlines():
        m = ROW.match(line)
        if m:
            allowed[m.group(1)] = set(re.findall(r"`(\w+)`", m.group(2)))
    return allowed


def actual() -> dict[str, dict[str, list[str]]]:
    """{package: {imported package: [files that import it]}} over every module of nvlm_train."""
    edges: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        if parts == ("__init__.py",):
            continue
        pkg = parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("nvlm_train.") and name.split(".")[1] != pkg:
                    edges[pkg][name.split(".")[1]].append(str(path.relative_to(REPO)))
    return edges


def test_every_package_is_declared():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    assert set(declared()) == packages | modules


def test_imports_follow_the_declared_arrows():
    allowed = declared()
    wrong = [f"{pkg} imports {dep} ({files[0]})" for pkg, deps in actual().items()
             for dep, files in deps.items() if dep not in allowed.get(pkg, set())]
    assert not wrong, "\n".join(wrong)


def test_named_rules_hold():
    graph = actual()
    for pkg in ("convert", "inference", "evaluation", "checkpoint", "data", "model"):
        assert "training" not in graph.get(pkg, {}), graph[pkg]["training"]
    assert "data" not in graph.get("model", {}), graph["model"]["data"]


def test_no_cycles():
    allowed = declared()
    seen, stack = set(), []

    def visit(pkg: str) -> None:
        assert pkg not in stack, " -> ".join([*stack[stack.index(pkg):], pkg])
        if pkg in seen:
            return
        stack.append(pkg)
        for dep in sorted(allowed.get(pkg, ())):
            visit(dep)
        stack.pop()
        seen.add(pkg)

    for pkg in sorted(allowed):
        visit(pkg)


def test_hf_remote_code_files_are_standalone():
    """The files copied into exports import only torch, transformers, the standard library and each other."""
    from nvlm_train.hf import MODELING_FILES

    siblings = {name.removesuffix(".py") for name in MODELING_FILES}
    for name in MODELING_FILES:
        for node in ast.walk(ast.parse((PACKAGE / "hf" / name).read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.module in siblings, (name, node.module)
            elif isinstance(node, ast.ImportFrom | ast.Import):
                mods = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(m.startswith("nvlm_train") for m in mods), (name, mods)
