"""What the package's source may not do with files users hand it."""

import ast
from pathlib import Path

import pytest

SOURCES = sorted((Path(__file__).resolve().parents[1] / "bench").glob("*.py"))


def problems(source: str) -> list[str]:
    """Pickle-family imports, eval/exec calls, and torch.load without weights_only=True."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                node.module or ""]
            found += [f"{node.lineno}: imports {n}" for n in names
                      if n.split(".")[0] in ("pickle", "dill", "marshal", "shelve")]
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("eval", "exec"):
            found.append(f"{node.lineno}: {func.id}()")
        if (isinstance(func, ast.Attribute) and func.attr == "load"
                and isinstance(func.value, ast.Name) and func.value.id == "torch"
                and not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                            and k.value.value is True for k in node.keywords)):
            found.append(f"{node.lineno}: torch.load without weights_only=True")
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_eval_exec_or_pickle_and_torch_load_only_with_weights_only(path):
    assert problems(path.read_text()) == []


def test_the_check_finds_each_kind_of_problem():
    source = ("import pickle\nimport torch\neval('1')\ntorch.load(p)\n"
              "torch.load(p, weights_only=False)\ntorch.load(p, weights_only=True)\n")
    assert problems(source) == ["1: imports pickle", "3: eval()",
                                "4: torch.load without weights_only=True",
                                "5: torch.load without weights_only=True"]
