"""No function in mbc_jax/ or experiments/ runs over MAX_LINES lines (def line to last line, nested
functions and methods included): a long one is split into named steps that read top to bottom.

    python tests/unit/test_function_length.py      # lists every function over the limit, longest first
"""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("mbc_jax", "experiments")
MAX_LINES = 80

# "path:function" -> why it may stay long. Only two reasons are good: the function is one flat table
# (a list of entries a reader scans, not steps), or it is in a file another change owns and is being
# split there (such an entry goes when that change lands). Empty today: nothing needs an exception.
ALLOWED: dict[str, str] = {}


def long_functions(max_lines: int = MAX_LINES) -> list[tuple[int, str]]:
    """(lines, "path:line function") of every function longer than `max_lines`, longest first."""
    found = []
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > max_lines:
                        found.append((lines, f"{path.relative_to(REPO)}:{node.lineno} {node.name}"))
    return sorted(found, reverse=True)


def _key(where: str) -> str:
    """"path:line name" -> "path:name" (the allow-list's key: line numbers move)."""
    location, name = where.split(" ")
    return f"{location.rsplit(':', 1)[0]}:{name}"


def test_no_function_is_over_the_limit():
    too_long = [f"{where} ({lines} lines)" for lines, where in long_functions() if _key(where) not in ALLOWED]
    assert too_long == [], f"split these into named steps (at most {MAX_LINES} lines each): {too_long}"


def test_allow_list_names_only_long_functions():
    # an entry whose function was split (or renamed) must go, so the list never hides a new long one
    still_long = {_key(where) for _, where in long_functions()}
    assert sorted(set(ALLOWED) - still_long) == []


def test_the_scan_finds_functions():
    # the limit is what fails: with a limit of 1 line every function of more than one line is listed
    found = long_functions(max_lines=1)
    assert len(found) > 500
    assert {where.split("/")[0] for _, where in found} == set(ROOTS)


if __name__ == "__main__":
    for lines, where in long_functions():
        print(f"{lines:5d}  {where}" + ("  (allowed)" if _key(where) in ALLOWED else ""))
