"""Only the application (app/) and the benchmarks (bench/) write to the terminal; the libraries log
through ``logging.getLogger(__name__)``, so each event reaches the terminal once, through the app's handler."""
import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
LIBRARIES = ("pipeline", "training", "shardio", "flows", "schemas")


def terminal_writes(path: Path) -> list[int]:
    """Lines calling ``print`` or writing to ``sys.stdout`` / ``sys.stderr``."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id == "print":
            lines.append(node.lineno)
        elif isinstance(f, ast.Attribute) and f.attr == "write" and isinstance(f.value, ast.Attribute) \
                and f.value.attr in ("stdout", "stderr") and getattr(f.value.value, "id", None) == "sys":
            lines.append(node.lineno)
    return lines


def test_libraries_do_not_print():
    found = [f"{p.relative_to(ROOT)}:{line}" for lib in LIBRARIES for p in sorted((ROOT / lib).rglob("*.py"))
             for line in terminal_writes(p)]
    assert found == [], "libraries log instead of printing (logging.getLogger(__name__)): " + ", ".join(found)


def test_the_check_sees_prints(tmp_path):
    (tmp_path / "m.py").write_text("import sys\nprint('x')\nsys.stderr.write('y')\nlog.info('z')\n")
    assert terminal_writes(tmp_path / "m.py") == [2, 3]


def long_functions(path: Path, limit: int = 80) -> list[str]:
    return [f"{path.relative_to(ROOT)}::{n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for n in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > limit]


def test_no_function_over_80_lines():
    found = [x for lib in (*LIBRARIES, "app") for p in sorted((ROOT / lib).rglob("*.py")) for x in long_functions(p)]
    assert found == [], "split these: " + ", ".join(found)
