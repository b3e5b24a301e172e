"""The package's layout rules, checked on the source (docs/architecture.md, "Module map").

- Layers: a module imports only from its own subpackage or from lower ones.
- Size: no module over 500 lines, no class over 300, no function over 80 (C kernels excepted).
- Architectures: no test of a model type by name outside ``universality/models/``.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "universality"
REPO = PACKAGE.parent
#: Lowest first; each subpackage may import itself and those before it.
LAYERS = ("core", "models", "data", "zoo", "sae", "compare", "circuits", "report", "workflow")
MAX_MODULE, MAX_CLASS, MAX_FUNCTION = 500, 300, 80


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def subpackage(path: Path) -> str | None:
    rel = path.relative_to(PACKAGE).parts
    return rel[0] if len(rel) > 1 else None


def imported_subpackages(tree: ast.AST, path: Path):
    """(line, subpackage) of every import of ``universality.<subpackage>`` in ``tree``."""
    own = subpackage(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's own package
                base = list(path.relative_to(PACKAGE).parts[:-1])[: len(path.relative_to(PACKAGE).parts) - node.level]
                mod = ".".join(["universality", *base] + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [mod] + ([f"{mod}.{a.name}" for a in node.names] if mod == "universality" else [])
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "universality" and len(parts) > 1 and parts[1] in LAYERS and parts[1] != own:
                yield node.lineno, parts[1]


def test_every_module_is_in_a_layer():
    loose = [str(p.relative_to(PACKAGE)) for p in modules()
             if subpackage(p) is None and p.name != "__init__.py"]
    assert not loose, f"modules outside a stage subpackage: {loose}"
    unknown = sorted({subpackage(p) for p in modules()} - set(LAYERS) - {None})
    assert not unknown, f"subpackages not in LAYERS: {unknown} (add them at their place)"


def test_no_import_from_a_higher_layer():
    bad = []
    for path in modules():
        own = subpackage(path)
        if own is None:
            continue
        rank = LAYERS.index(own)
        for line, other in imported_subpackages(ast.parse(path.read_text()), path):
            if LAYERS.index(other) > rank:
                bad.append(f"{path.relative_to(REPO)}:{line} ({own}) imports {other}")
    assert not bad, "imports from a higher layer:\n" + "\n".join(bad)


def test_sizes():
    bad = []
    for path in modules():
        text = path.read_text()
        n = len(text.splitlines())
        if n > MAX_MODULE:
            bad.append(f"{path.relative_to(REPO)}: {n} lines (module limit {MAX_MODULE})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                limit = MAX_CLASS if isinstance(node, ast.ClassDef) else MAX_FUNCTION
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {length} lines (limit {limit})")
    assert not bad, "\n".join(bad)


#: ``model_type == ...``, ``spec["arch"] != ...``, ``... == "mamba"`` and the like.
ARCH_TEST = re.compile(r"""(model_type|\barch\b["'\]]*)\s*(==|!=)|(==|!=)\s*["'](gpt_neox|mamba|rwkv)["']""")


@pytest.mark.parametrize("where", ["universality", "scripts", "rules", "Snakefile"])
def test_no_architecture_test_outside_the_registry(where):
    root = REPO / where
    files = [root] if root.is_file() else [p for p in root.rglob("*") if p.suffix in (".py", ".smk")]
    bad = []
    for path in files:
        if PACKAGE / "models" in path.parents:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if ARCH_TEST.search(line.split("#")[0]):
                bad.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not bad, "architecture tests outside universality/models:\n" + "\n".join(bad)


def test_the_checks_can_fail(tmp_path):
    """The import resolver sees absolute, relative and ``from universality import x`` forms."""
    fake = PACKAGE / "core" / "store.py"
    tree = ast.parse("from universality.report import page\nfrom universality import sae\n"
                     "from ..workflow import config\nimport universality.models.registry\n")
    assert [s for _, s in imported_subpackages(tree, fake)] == ["report", "sae", "workflow", "models"]
    for line in ('if config.model_type == "mamba":', 'if spec["arch"] != kind:', "if arch == kind:",
                 'keep = [m for m in ms if kind(m) == "rwkv"]'):
        assert ARCH_TEST.search(line), line
    for line in ("arch = spec['arch']", "for arch in ARCHITECTURES:", 'registry.get(spec["arch"])'):
        assert not ARCH_TEST.search(line), line


def rule_blocks(text: str) -> dict[str, str]:
    """``{rule name: its body}`` of a .smk file (a rule ends where the next top-level line starts)."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", text, re.M)}


def test_every_rule_names_log_benchmark_threads_and_resources():
    """The style guide's rule shape, plus the benchmark record benchmarks/job_times.py reads."""
    missing = []
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for name, body in rule_blocks(smk.read_text()).items():
            if name == "all":
                continue
            missing += [f"{smk.name}:{name} {key}" for key in ("log:", "benchmark:", "threads:", "resources:")
                        if f"\n    {key}" not in f"\n{body}"]
    assert not missing, missing


def test_rule_blocks_sees_a_missing_benchmark():
    text = "rule a:\n    log:\n        x,\n    threads: 1\n\n\nrule b:\n    benchmark:\n        y,\n"
    blocks = rule_blocks(text)
    assert set(blocks) == {"a", "b"} and "benchmark:" not in blocks["a"] and "benchmark:" in blocks["b"]
