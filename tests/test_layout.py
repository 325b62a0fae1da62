"""The import layout of db/ (docs/design.md, "Who may use db/"): no module of it imports another in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

DB = Path(__file__).resolve().parents[1] / "db"


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The db modules ``path`` imports, at any depth (function-level imports count)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            out |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("db."):
            out.add(node.module.split(".")[1])
    return out & modules - {path.stem}


def test_db_modules_import_no_circle():
    modules = {p.stem for p in DB.glob("*.py")} - {"__init__"}
    graph = {m: _imports(DB / f"{m}.py", modules) for m in modules}
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        assert m not in path, f"import circle in db/: {' -> '.join(path[path.index(m):] + [m])}"
        if m not in done:
            for d in sorted(graph[m]):
                visit(d, path + [m])
            done.add(m)

    for m in sorted(modules):
        visit(m, [])
