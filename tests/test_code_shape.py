"""Functions stay short enough to read in one screen, or say in their docstring why not.

A function's length is counted from its first statement after the docstring to its end, so a
thorough docstring never counts against it. A longer one passes when its docstring explains it
with a sentence starting "Long" (as ``lean_logits.forward`` does: it mirrors the native forward's
every keyword).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 60
# A sentence of the docstring that starts with "Long" says why the function is long.
SAYS_WHY = re.compile(r"(?:^|[.!?:]\s+)Long\b")


def _long_functions(root: Path, base: Path = REPO) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node) or ""
            body = node.body[1:] if doc and len(node.body) > 1 else node.body
            lines = (node.end_lineno or node.lineno) - body[0].lineno + 1
            if lines > MAX_LINES and not SAYS_WHY.search(doc):
                found.append(f"{path.relative_to(base)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_over_sixty_lines_without_saying_why() -> None:
    found = [f for folder in ("platform/crashchat", "jobs") for f in _long_functions(REPO / folder)]
    assert found == [], "split these, or say in the docstring why they are long:\n" + "\n".join(
        found
    )


def test_the_check_sees_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES + 1))
    (tmp_path / "long.py").write_text(f'def f():\n    """Doc."""\n{body}\n')
    (tmp_path / "said.py").write_text(f'def g():\n    """Doc.  Long: it must be."""\n{body}\n')
    (tmp_path / "word.py").write_text(f'def k():\n    """The Longest path."""\n{body}\n')
    (tmp_path / "short.py").write_text('def h():\n    """Doc."""\n    return 1\n')
    assert _long_functions(tmp_path, tmp_path) == [
        "long.py:1 f (61 lines)",
        "word.py:1 k (61 lines)",
    ]
