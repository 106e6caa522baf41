"""The product package holds the product only: `consumer/` reaches `devtools/` (the simulator,
broker, samples and demo, not in the wheel) only lazily, when a development command runs."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "consumer"
CLI = Path(sys.executable).with_name("profile-consumer")
# The only places allowed to import devtools: the parser's lazy option loader and the handler
# of `simulate-target` and `demo`, both in consumer/cli.py.
ALLOWED = {("consumer/cli.py", "_add_devtools_options"), ("consumer/cli.py", "cmd_devtools")}

# Makes `devtools` unimportable, as in an installed wheel (the editable install finds it).
BLOCK_DEVTOOLS = """
import sys

class _NoDevtools:
    def find_spec(self, name, path=None, target=None):
        if name == "devtools" or name.startswith("devtools."):
            raise ImportError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoDevtools())
"""


def _imports_devtools(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(alias.name.split(".")[0] == "devtools" for alias in node.names)
    if isinstance(node, ast.ImportFrom):
        return node.level == 0 and (node.module or "").split(".")[0] == "devtools"
    return False


def devtools_imports(source: str) -> list[tuple[str, int]]:
    """(enclosing top-level function or "<module>", line) of every devtools import in `source`."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, owner: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = owner
            if owner == "<module>" and isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
            ):
                name = child.name
            if _imports_devtools(child):
                found.append((name, child.lineno))
            visit(child, name)

    visit(ast.parse(source), "<module>")
    return found


def test_the_scan_sees_imports_at_any_depth() -> None:
    source = (
        "import devtools\n"
        "def f():\n    from devtools.simulator import x\n"
        "class C:\n    def m(self):\n        import devtools.broker as b\n"
        "from consumer import devtools_like\nimport devtoolsx\n"
    )
    assert devtools_imports(source) == [("<module>", 1), ("f", 3), ("C", 6)]


def test_consumer_imports_devtools_only_in_the_lazy_cli_functions() -> None:
    found = {
        (str(path.relative_to(ROOT)), owner, line)
        for path in sorted(PACKAGE.rglob("*.py"))
        for owner, line in devtools_imports(path.read_text("utf-8"))
    }
    stray = {entry for entry in found if entry[:2] not in ALLOWED}
    assert not stray, f"consumer/ imports devtools outside the lazy CLI functions: {stray}"
    # Each allowed function still imports it: otherwise this test no longer guards anything.
    assert {entry[:2] for entry in found} == ALLOWED


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **env},
    )


def test_importing_the_product_and_building_its_parser_loads_no_devtools() -> None:
    result = _python(
        "import sys\n"
        "import consumer.app, consumer.cli\n"
        "consumer.cli.build_parser()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'devtools'))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_parsing_a_development_command_does_load_devtools() -> None:
    """The counterpart of the test above: the same probe sees devtools when it is loaded."""
    result = _python(
        "import sys\n"
        "import consumer.cli\n"
        "consumer.cli.build_parser().parse_args(['simulate-target', '--port', '1'])\n"
        "print('devtools.commands' in sys.modules)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


@pytest.fixture
def without_devtools(tmp_path: Path) -> dict[str, str]:
    """An environment in which `import devtools` fails (a sitecustomize blocks it)."""
    (tmp_path / "sitecustomize.py").write_text(BLOCK_DEVTOOLS)
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


def _cli(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *argv], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize(
    "argv",
    [["demo"], ["demo", "--events", "10"], ["simulate-target", "--port", "0"]],
)
def test_without_devtools_a_development_command_explains_and_exits_2(
    without_devtools: dict[str, str], argv: list[str]
) -> None:
    result = _cli(argv, without_devtools)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == (
        f"profile-consumer {argv[0]}: needs the development tools (devtools/), which are not "
        "installed: run it from a clone with `pip install -e '.[dev]'`\n"
    )
    assert "Traceback" not in result.stderr


def test_without_devtools_help_says_what_is_missing(without_devtools: dict[str, str]) -> None:
    result = _cli(["simulate-target", "--help"], without_devtools)
    assert result.returncode == 0, result.stderr
    assert "needs the development tools" in result.stdout
    assert "--port" not in result.stdout


def test_without_devtools_the_product_commands_still_run(
    without_devtools: dict[str, str],
) -> None:
    config = ROOT / "examples" / "config.yaml"
    result = _cli(["check", "--config", str(config)], without_devtools)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{config}: OK"
