"""Running a user's test suite on tonio_loop with pytest-asyncio's
`pytest_asyncio_loop_factories` hook, the way the README documents it.

Each test writes a small suite into a temporary directory and runs pytest on
it in a child process: async tests, async fixtures of function and module
scope sharing their loop, and a test that picks one of several loops by name
with `@pytest.mark.asyncio(loop_factories=[...])`.
"""

import re
import subprocess
import sys
import textwrap

import pytest

from tests.integration.support import python_env

pytest.importorskip("pytest_asyncio")

# the expected class of the running loop, per loop name
LOOP_CLASSES = {"asyncio": "asyncio.unix_events._UnixSelectorEventLoop",
                "tonio": "tonio_loop._loop.Loop"}

CONFTEST = """
import asyncio
import pytest
import tonio_loop

FACTORIES = {{"asyncio": asyncio.new_event_loop, "tonio": tonio_loop.new_event_loop}}


def pytest_asyncio_loop_factories(config, item):
    # every async test and fixture runs on each loop named here
    return {{name: FACTORIES[name] for name in {names!r}}}


def loop_class():
    loop = asyncio.get_running_loop()
    return f"{{type(loop).__module__}}.{{type(loop).__qualname__}}"


@pytest.fixture
async def server():
    # an async fixture: it runs on the same loop as the test that uses it
    async def echo(reader, writer):
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield srv.sockets[0].getsockname()[1], asyncio.get_running_loop()
    srv.close()
    await srv.wait_closed()
"""

TESTS = """
import asyncio
import pytest
from conftest import loop_class


async def test_runs_on_the_loop():
    print("LOOP", loop_class())
    await asyncio.sleep(0.01)


async def test_fixture_shares_the_loop(server):
    port, fixture_loop = server
    assert fixture_loop is asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"ping")
    writer.write_eof()
    assert await reader.read() == b"ping"
    writer.close()
    await writer.wait_closed()


LOOPS = []


@pytest.mark.asyncio(loop_scope="module")
async def test_module_loop_first():
    LOOPS.append(asyncio.get_running_loop())


@pytest.mark.asyncio(loop_scope="module")
async def test_module_loop_second():
    LOOPS.append(asyncio.get_running_loop())
    # both tests of this module scope ran on one loop (per loop kind)
    assert LOOPS[-1] is LOOPS[-2]


@pytest.mark.asyncio(loop_factories=["tonio"])
async def test_only_on_tonio():
    print("ONLY", loop_class())
"""


def run_user_suite(tmp_path, names):
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST.format(names=names)))
    (tmp_path / "test_user.py").write_text(textwrap.dedent(TESTS))
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    env = python_env()
    env.pop("PYTEST_ADDOPTS", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-s",
         "-p", "no:randomly", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    return result


def outcomes(output):
    """{test id: outcome} from pytest's -rA summary."""
    return {m.group(2): m.group(1) for m in re.finditer(
        r"^(PASSED|FAILED|ERROR|SKIPPED) test_user\.py::(\S+)", output, re.M)}


TESTS_ON_EVERY_LOOP = ("test_runs_on_the_loop", "test_fixture_shares_the_loop",
                       "test_module_loop_first", "test_module_loop_second")


def test_suite_on_one_loop(tmp_path, loop_name):
    result = run_user_suite(tmp_path, [loop_name])
    assert result.returncode == 0, result.stdout + result.stderr
    # with a single loop the test ids carry no loop name
    expected = dict.fromkeys(TESTS_ON_EVERY_LOOP, "PASSED")
    if loop_name == "tonio":
        expected["test_only_on_tonio"] = "PASSED"
        assert f"ONLY {LOOP_CLASSES['tonio']}" in result.stdout
    else:
        # the marker names a loop that the hook does not offer: skipped
        assert re.search(r"^SKIPPED \[1\] test_user\.py:\d+", result.stdout, re.M), \
            result.stdout
    assert outcomes(result.stdout) == expected, result.stdout + result.stderr
    assert f"LOOP {LOOP_CLASSES[loop_name]}" in result.stdout


def test_suite_on_both_loops(tmp_path):
    result = run_user_suite(tmp_path, ["asyncio", "tonio"])
    assert result.returncode == 0, result.stdout + result.stderr
    expected = {f"{t}[{name}]": "PASSED" for t in TESTS_ON_EVERY_LOOP
                for name in ("asyncio", "tonio")}
    # the marker picks one of the loops: a single test, without a loop id
    expected["test_only_on_tonio"] = "PASSED"
    assert outcomes(result.stdout) == expected, result.stdout
    for name in ("asyncio", "tonio"):
        assert f"LOOP {LOOP_CLASSES[name]}" in result.stdout
    assert f"ONLY {LOOP_CLASSES['tonio']}" in result.stdout
