"""The core stays in small, named pieces (issue 14, "Shape first").

Hedging, spillover, waiting and streaming all enter the chain walk; each rule is one small
function of ``chainop.core`` with its own tests, and ``execute`` only sequences them. This
test keeps it that way: no function of ``operator/chainop/core`` is longer than 60 lines
of code (its docstring not counted: explaining why is never the problem).
"""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "operator" / "chainop" / "core"
LIMIT = 60


def code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the end of the function."""
    body = node.body
    first = body[0]
    has_docstring = (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    )
    if has_docstring and len(body) > 1:
        first = body[1]
    end = node.end_lineno or node.lineno
    return end - first.lineno + 1


def test_no_function_in_core_is_over_sixty_lines() -> None:
    too_long = []
    for path in sorted(CORE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = code_lines(node)
                if lines > LIMIT:
                    too_long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert not too_long, "split these into named, tested pieces: " + ", ".join(too_long)


def test_the_measure_counts_code_not_docstrings() -> None:
    source = 'def f():\n    """Doc.\n\n    More.\n    """\n    a = 1\n    return a\n'
    node = ast.parse(source).body[0]
    assert isinstance(node, ast.FunctionDef)
    assert code_lines(node) == 2
