"""The package's types: its stubs check under `mypy --strict` for what the
README shows (tests/typing/uses_the_api.py), agree with the runtime
(`mypy.stubtest`), and the checked file also runs."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
USES = os.path.join(HERE, "typing", "uses_the_api.py")


def _mypy(tmp_path, *args):
    env = dict(os.environ, MYPY_CACHE_DIR=str(tmp_path / "mypy-cache"))
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)


@pytest.mark.timeout(300)
def test_readme_api_passes_mypy_strict(tmp_path):
    r = _mypy(tmp_path, "mypy", "--strict", "--no-incremental", USES)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.timeout(300)
def test_stubs_agree_with_the_runtime(tmp_path):
    r = _mypy(tmp_path, "mypy.stubtest", "tonio_loop")
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_checked_file_runs():
    sys.path.insert(0, os.path.dirname(USES))
    try:
        import uses_the_api
    finally:
        sys.path.remove(os.path.dirname(USES))
    assert uses_the_api.run_every_way() == [3] * (6 if sys.version_info >= (3, 12) else 5)
    uses_the_api.the_policy_way()
