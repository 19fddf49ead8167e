"""tonio_loop's entry points: run(), new_event_loop(), the policy, install()."""

import asyncio
import re
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest

import tonio_loop


def test_exports():
    assert isinstance(tonio_loop.__version__, str)
    for name in tonio_loop.__all__:
        assert hasattr(tonio_loop, name), name
    loop = tonio_loop.new_event_loop()
    try:
        assert isinstance(loop, tonio_loop.Loop)
        assert isinstance(loop, asyncio.AbstractEventLoop)
    finally:
        loop.close()


def test_run_returns_result():
    async def main(x):
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop()), x

    cls, x = tonio_loop.run(main(5))
    assert cls is tonio_loop.Loop and x == 5


def test_run_debug_flag():
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert tonio_loop.run(main(), debug=True) is True


def test_run_passes_kwargs_to_factory():
    seen = {}

    def factory(**kwargs):
        seen.update(kwargs)
        return tonio_loop.new_event_loop()

    async def main():
        return 1

    assert tonio_loop.run(main(), loop_factory=factory, flavour="x") == 1
    assert seen == {"flavour": "x"}


def test_run_refuses_foreign_loop():
    async def main():
        return 1

    coro = main()
    with pytest.raises(TypeError, match="non-tonio_loop event loop"):
        tonio_loop.run(coro, loop_factory=asyncio.new_event_loop)
    coro.close()


def test_run_inside_running_loop_is_refused():
    async def inner():
        pass

    async def main():
        c = inner()
        try:
            tonio_loop.run(c)
        finally:
            c.close()

    with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
        tonio_loop.run(main())


def test_run_non_coroutine():
    """asyncio.run()'s error, whatever this Python's asyncio says (3.14:
    TypeError "An asyncio.Future, a coroutine or an awaitable is required")."""
    with pytest.raises((ValueError, TypeError)) as expected:
        asyncio.run(42)
    with pytest.raises(type(expected.value), match=re.escape(str(expected.value))):
        tonio_loop.run(42)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="loop_factory is 3.12+")
def test_asyncio_run_with_loop_factory():
    async def main():
        return type(asyncio.get_running_loop())

    assert asyncio.run(main(), loop_factory=tonio_loop.new_event_loop) is tonio_loop.Loop


def test_asyncio_runner_with_loop_factory():
    async def main():
        return type(asyncio.get_running_loop())

    with asyncio.Runner(loop_factory=tonio_loop.new_event_loop) as runner:
        assert runner.run(main()) is tonio_loop.Loop


def test_policy():
    old = asyncio.get_event_loop_policy()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(tonio_loop.EventLoopPolicy())
        loop = asyncio.new_event_loop()
        try:
            assert isinstance(loop, tonio_loop.Loop)
        finally:
            loop.close()

        async def main():
            return type(asyncio.get_running_loop())

        assert asyncio.run(main()) is tonio_loop.Loop
    finally:
        asyncio.set_event_loop_policy(old)


def test_install():
    old = asyncio.get_event_loop_policy()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            tonio_loop.install()
        assert isinstance(asyncio.get_event_loop_policy(), tonio_loop.EventLoopPolicy)
    finally:
        asyncio.set_event_loop_policy(old)


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="policies are deprecated on 3.14+")
def test_policy_not_deprecated_before_314():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tonio_loop.EventLoopPolicy()


CTRL_C_SCRIPT = textwrap.dedent("""
    import asyncio, sys, time
    import tonio_loop

    mode = sys.argv[1]
    loop = tonio_loop.new_event_loop()
    print("ready", flush=True)
    t0 = time.monotonic()
    try:
        if mode == "run_forever":
            loop.run_forever()                       # nothing scheduled: sleeps in poll
        elif mode == "sleep":
            loop.run_until_complete(asyncio.sleep(3600))
        elif mode == "run":
            loop.close()
            tonio_loop.run(asyncio.sleep(3600))
    except KeyboardInterrupt:
        print(f"KeyboardInterrupt after {time.monotonic() - t0:.3f}", flush=True)
    finally:
        if not loop.is_closed():
            loop.close()
""")


@pytest.mark.parametrize("mode", ["run_forever", "sleep", "run"])
def test_ctrl_c_interrupts_sleeping_loop(mode, tmp_path):
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)       # let it fall asleep in the poll
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "KeyboardInterrupt after" in out, (out, err)
    assert elapsed < 2, elapsed
