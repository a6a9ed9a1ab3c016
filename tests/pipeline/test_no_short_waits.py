"""No test fails because the machine is busy: no wall-clock limit under 15 minutes anywhere in tests/."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TypeGuard

MIN_SECONDS = 900
TESTS = Path(__file__).resolve().parents[1]  # the whole tests/ folder


def _short(node: ast.AST | None) -> TypeGuard[ast.Constant]:
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
        and node.value < MIN_SECONDS
    )


def _is_clock(node: ast.AST) -> bool:
    """`time.time()`, `time.monotonic()` or a bare `monotonic()` / `time()` call."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in ("time", "monotonic", "perf_counter")


def short_waits(source: str) -> list[tuple[int, str]]:
    """(line, what) of every `timeout=` keyword or default, and every `clock() + N` deadline, under 900 s."""
    found = []
    tree = ast.parse(source)
    # helpers defined in the file, e.g. `wait_for(predicate, timeout, what)`, called with a positional limit
    params = {f.name: [a.arg for a in f.args.args] for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in params:
            names = params[node.func.id]
            found += [
                (arg.lineno, f"{node.func.id}(... {arg.value} ...) as timeout")
                for i, arg in enumerate(node.args)
                if i < len(names) and names[i] == "timeout" and _short(arg)
            ]
        if isinstance(node, ast.keyword) and node.arg == "timeout" and _short(node.value):
            found.append((node.value.lineno, f"timeout={node.value.value}"))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args.args + node.args.kwonlyargs
            defaults = (
                [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults + node.args.kw_defaults
            )
            found += [
                (d.lineno, f"{a.arg}={d.value} (default)")
                for a, d in zip(args, defaults, strict=True)
                if a.arg == "timeout" and _short(d)
            ]
        elif (
            isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add) and _is_clock(node.left) and _short(node.right)
        ):
            found.append((node.lineno, f"deadline clock() + {node.right.value}"))
    return sorted(found)


def test_the_scanner_finds_every_kind_of_short_wait():
    source = (
        "subprocess.run(cmd, timeout=240)\nproc.wait(timeout=30.5)\ndef run(cmd, timeout=600):\n    pass\n"
        "deadline = time.time() + 90\nend = time.monotonic() + 60\n"
        "ok = subprocess.run(cmd, timeout=900)\nalso_ok = f(timeout=None)\nlater = time.time() + 3600\n"
        "def wait_for(predicate, timeout, what):\n    pass\nwait_for(ready, 240, 'the server')\n"
    )
    assert [what for _, what in short_waits(source)] == [
        "timeout=240",
        "timeout=30.5",
        "timeout=600 (default)",
        "deadline clock() + 90",
        "deadline clock() + 60",
        "wait_for(... 240 ...) as timeout",
    ]


def test_no_wait_limit_under_fifteen_minutes_in_tests():
    offenders = [
        f"{path.relative_to(TESTS.parent)}:{line}: {what}"
        for path in sorted(TESTS.rglob("*.py"))
        for line, what in short_waits(path.read_text())
    ]
    assert not offenders, "wall-clock limits under 15 minutes fail tests on a busy machine:\n" + "\n".join(offenders)
