"""The shape of the code: the layers declared in pyproject.toml hold, and no import circles."""

import ast
import subprocess
import sys
from pathlib import Path

import grimp

from tests.conftest import PROJECT_DIR

PACKAGES = ("agentops", "runs", "tools")


def test_the_import_layers_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--no-cache"], cwd=PROJECT_DIR, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_module_of_ours_imports_itself_back():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    circles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back:
                circles.append(" -> ".join((module, *back)))
    assert circles == []


def test_no_code_decides_on_the_text_shown_to_people():
    """Run.status_reason is for people: what a run waits for is Run.wait_kind and wait_ref."""
    readers = []
    for path in sorted(PROJECT_DIR.glob("[rt][uo]*/**/*.py")):
        if "migrations" in path.parts or path.parts[-2] == "tests":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Compare, ast.If, ast.IfExp, ast.BoolOp, ast.keyword, ast.Call)):
                text = ast.unparse(node)
                if "status_reason__" in text or "status_reason.startswith" in text or "in run.status_reason" in text:
                    readers.append(f"{path.relative_to(PROJECT_DIR)}:{node.lineno}: {text[:80]}")
    assert readers == []
