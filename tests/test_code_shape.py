"""The shape of the step's code (issue 26): typed results instead of long positional tuples,
steps short enough to read in one sitting, the owed transition paid at one point of each step."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from worldmodel import hierarchy

ROOT = Path(__file__).resolve().parents[1] / "worldmodel"


def _functions(tree: ast.AST):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_function_in_worldmodel_returns_more_than_three_unnamed_values():
    """A fixed-length tuple of more than 3 values, returned or annotated, is a dataclass or a
    NamedTuple instead; `tuple[int, ...]` (a sequence of one type) is a value, not a return bundle."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name}"
            ann = node.returns
            if isinstance(ann, ast.Name) and ann.id == "tuple":
                found.append(f"{where}: returns a bare `tuple`")
            if isinstance(ann, ast.Subscript) and isinstance(ann.value, ast.Name) and ann.value.id == "tuple":
                elts = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
                variadic = any(isinstance(e, ast.Constant) and e.value is Ellipsis for e in elts)
                plain = all(isinstance(e, (ast.Name, ast.Constant)) for e in elts)
                if len(elts) > 3 or (variadic and not plain):
                    found.append(f"{where}: {ast.unparse(ann)}")
            for sub in ast.walk(node):
                if isinstance(sub, ast.Return) and isinstance(sub.value, ast.Tuple) \
                        and len(sub.value.elts) > 3:
                    found.append(f"{where}: returns a {len(sub.value.elts)}-tuple (line {sub.lineno})")
    assert not found, "\n".join(found)


def test_the_steps_read_in_one_sitting():
    for step in (hierarchy.Hierarchy.infer_step, hierarchy.Hierarchy.imagine_step):
        lines = inspect.getsource(step).splitlines()
        assert len(lines) <= 60, f"{step.__name__} has {len(lines)} lines"
        assert "eq. " in inspect.getsource(step)


def test_the_owed_transition_is_paid_at_one_point_of_each_step():
    source = inspect.getsource(hierarchy)
    calls = [n for n in ast.walk(ast.parse(source))
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "pay_owed"]
    assert len(calls) == 2  # once in the bottom-up loop of filtering, once in that of imagination
    for stage in (hierarchy.Hierarchy._decide, hierarchy.Hierarchy._sample_e):
        assert inspect.getsource(stage).count("self.pay_owed(") == 1
