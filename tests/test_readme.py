"""Every code block of the README runs here, as a user would run it: the
Python ones as scripts, the conftest one as pytest-asyncio calls it, the
shell ones as far as a test can (make's dry run, pip's metadata build,
uvicorn's import of the loop factory). Output blocks are tagged `text`."""

import ast
import os
import re
import subprocess
import sys

import pytest

import tonio_loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _blocks():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    return [(m.group(1), m.group(2)) for m in
            re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.S | re.M)]


BLOCKS = _blocks()


def test_every_block_is_one_this_file_runs():
    kinds = {lang for lang, _ in BLOCKS}
    assert kinds <= {"python", "sh", "text"}, kinds
    assert len([b for b in BLOCKS if b[0] == "python"]) == 2


def _python_blocks():
    return [code for lang, code in BLOCKS if lang == "python"]


_MAIN = """import asyncio, tonio_loop
async def main():
    return type(asyncio.get_running_loop()).__module__
"""


def _switch_statements():
    code = next(c for c in _python_blocks() if "tonio_loop.run(main())" in c)
    tree = ast.parse(code)
    return [ast.get_source_segment(code, node) for node in tree.body
            if not isinstance(node, ast.Import)]


@pytest.mark.parametrize("statement", _switch_statements())
def test_each_way_to_switch_runs_main_on_tonio(statement):
    if "loop_factory=tonio_loop.new_event_loop)" in statement and "asyncio.run" in statement \
            and sys.version_info < (3, 12):
        pytest.skip("asyncio.run(loop_factory=) is 3.12+, as the README says")
    if "main()" not in statement:       # it sets up what asyncio.run() then uses
        script = _MAIN + statement + "\nprint(asyncio.run(main()))"
    elif "\n" in statement:              # a with block
        script = _MAIN + statement.replace("runner.run(main())", "print(runner.run(main()))")
    else:
        script = _MAIN + f"print({statement})"
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "tonio_loop._loop", (script, r.stdout)


def test_the_conftest_block_gives_pytest_asyncio_a_tonio_factory():
    code = next(c for c in _python_blocks() if "pytest_asyncio_loop_factories" in c)
    ns = {}
    exec(compile(code, "README conftest.py", "exec"), ns)
    factories = ns["pytest_asyncio_loop_factories"](None, None)
    assert list(factories) == ["tonio"]
    loop = factories["tonio"]()
    try:
        assert isinstance(loop, tonio_loop.Loop)
    finally:
        loop.close()


def _sh_lines():
    lines = []
    for lang, code in BLOCKS:
        if lang == "sh":
            lines += [line.split("#")[0].strip() for line in code.splitlines() if line.strip()]
    return lines


@pytest.mark.parametrize("line", _sh_lines())
def test_each_shell_line_is_real(line):
    words = line.split()
    if words[0] == "make":
        # the target exists and make can plan it (a dry run builds nothing)
        r = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    elif words[0] == "uvicorn":
        importer = pytest.importorskip("uvicorn.importer")
        factory = importer.import_from_string(words[words.index("--loop") + 1])
        loop = factory()
        try:
            assert isinstance(loop, tonio_loop.Loop)
        finally:
            loop.close()
    elif words[:2] == ["pip", "install"]:
        # pip reads the package's metadata from the tree as it would to build
        # it (the build itself is `make dist`'s check)
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps",
                            "--no-build-isolation", "-q", *words[2:]], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    else:
        pytest.fail(f"a README shell line this test does not know: {line}")


def test_the_text_blocks_are_the_bench_output():
    texts = [code for lang, code in BLOCKS if lang == "text"]
    assert texts and all(t.startswith("machine:") for t in texts)


# ---- docs/api.md: its examples run, and its pytest-asyncio < 1.4 recipe ----

def _api_blocks():
    with open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8") as f:
        text = f.read()
    return [m.group(1) for m in re.finditer(r"^```python\n(.*?)^```$", text, re.S | re.M)]


@pytest.mark.parametrize("code", [c for c in _api_blocks() if "conftest.py" not in c],
                         ids=lambda c: c.splitlines()[0][:40])
def test_each_api_example_runs(code):
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr


@pytest.mark.timeout(400)
def test_the_pytest_asyncio_1_3_recipe(tmp_path):
    """The api.md conftest for pytest-asyncio before 1.4, with the version it
    names: a fresh virtualenv with pytest-asyncio 1.3.0 runs a test on a
    tonio_loop loop."""
    code = next(c for c in _api_blocks() if "conftest.py" in c)
    assert "0.23 - 1.3" in code
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    r = subprocess.run([py, "-m", "pip", "install", "-q", "pytest>=8,<9", "pytest-asyncio==1.3.0"],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        pytest.skip(f"pytest-asyncio 1.3.0 could not be installed here: {r.stderr[-300:]}")
    project = tmp_path / "project"
    project.mkdir()
    (project / "conftest.py").write_text(code)
    (project / "test_it.py").write_text(
        "import asyncio, tonio_loop\n"
        "async def test_runs_on_tonio():\n"
        "    assert isinstance(asyncio.get_running_loop(), tonio_loop.Loop)\n")
    (project / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\n")
    r = subprocess.run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W",
                        "ignore::DeprecationWarning"], cwd=project, capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout + r.stderr
