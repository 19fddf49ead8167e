"""subprocess_exec/subprocess_shell and asyncio.create_subprocess_*, on both loops."""

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from .netutil import is_tonio, wait_for

PY = sys.executable
PIPE = subprocess.PIPE

# a child that copies stdin to stdout; `cat` starts much faster than Python
CAT = ["cat"]


def py(code):
    return [PY, "-c", code]


def reaped(pid):
    """True when pid is no child of ours any more (no zombie left)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


# ---- exec and shell, pipes, return codes ---------------------------------------------

async def test_exec_pipes_and_returncode():
    proc = await asyncio.create_subprocess_exec(
        *py("import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d.upper()); "
            "sys.stderr.write('to stderr'); sys.exit(7)"),
        stdin=PIPE, stdout=PIPE, stderr=PIPE)
    assert isinstance(proc.pid, int) and proc.returncode is None
    out, err = await proc.communicate(b"hello")
    assert (out, err, proc.returncode) == (b"HELLO", b"to stderr", 7)
    assert await proc.wait() == 7
    assert reaped(proc.pid)


async def test_shell_with_env_and_cwd():
    with tempfile.TemporaryDirectory() as d:
        proc = await asyncio.create_subprocess_shell(
            'echo "$TONIO_VAR"; pwd; exit 3', stdout=PIPE,
            env={"TONIO_VAR": "from env", "PATH": os.environ["PATH"]}, cwd=d)
        out, err = await proc.communicate()
        assert err is None
        assert out.decode().splitlines() == ["from env", os.path.realpath(d)]
        assert proc.returncode == 3


async def test_communicate_large_data():
    data = os.urandom(8 * 1024 * 1024 + 17)
    proc = await asyncio.create_subprocess_exec(*CAT, stdin=PIPE, stdout=PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(data), 30)
    assert out == data
    assert proc.returncode == 0


async def test_stream_by_lines_and_stdin_drain():
    proc = await asyncio.create_subprocess_exec(*CAT, stdin=PIPE, stdout=PIPE)
    for i in range(50):
        proc.stdin.write(b"line %d\n" % i)
        await proc.stdin.drain()
        assert await proc.stdout.readline() == b"line %d\n" % i
    proc.stdin.close()
    await proc.stdin.wait_closed()
    assert await proc.stdout.read() == b""
    assert await proc.wait() == 0


async def test_stderr_to_stdout_devnull_and_files():
    proc = await asyncio.create_subprocess_exec(
        *py("import sys; print('out', flush=True); print('err', file=sys.stderr)"),
        stdout=PIPE, stderr=subprocess.STDOUT)
    out, err = await proc.communicate()
    assert out.split() == [b"out", b"err"] and err is None
    proc = await asyncio.create_subprocess_exec(
        *py("import sys; print(sys.stdin.read() == '')"),
        stdin=subprocess.DEVNULL, stdout=PIPE, stderr=subprocess.DEVNULL)
    assert (await proc.communicate())[0] == b"True\n"
    with tempfile.TemporaryFile() as f:
        proc = await asyncio.create_subprocess_exec("echo", "to a file", stdout=f)
        assert await proc.wait() == 0
        assert proc.stdout is None
        f.seek(0)
        assert f.read() == b"to a file\n"


async def test_popen_options():
    r, w = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            *py("import os, sys; os.write(int(sys.argv[1]), b'passed'); "
                "print(os.getsid(0) == os.getpid(), oct(os.umask(0)))"),
            str(w), pass_fds=(w,), start_new_session=True, umask=0o027, stdout=PIPE,
            user=os.getuid(), group=os.getgid())
        out, _ = await proc.communicate()
        os.close(w)
        w = None
        assert out.split() == [b"True", b"0o27"]
        assert os.read(r, 100) == b"passed"
    finally:
        os.close(r)
        if w is not None:
            os.close(w)
    proc = await asyncio.create_subprocess_exec(
        *py("import os; print(os.getpgid(0) == os.getpid())"), process_group=0, stdout=PIPE)
    assert (await proc.communicate())[0] == b"True\n"
    proc = await asyncio.create_subprocess_exec(
        *py("import os; print(os.environ.get('PREEXEC'))"), stdout=PIPE,
        preexec_fn=lambda: os.environ.__setitem__("PREEXEC", "ran"))
    assert (await proc.communicate())[0] == b"ran\n"


# ---- signals --------------------------------------------------------------------------

@pytest.mark.parametrize("how, code", [("kill", -signal.SIGKILL),
                                       ("terminate", -signal.SIGTERM),
                                       ("send_signal", -signal.SIGUSR1)])
async def test_kill_terminate_send_signal(how, code):
    proc = await asyncio.create_subprocess_exec(
        *py("import sys, time; print('up', flush=True); time.sleep(30)"), stdout=PIPE)
    assert await proc.stdout.readline() == b"up\n"
    if how == "send_signal":
        proc.send_signal(signal.SIGUSR1)
    else:
        getattr(proc, how)()
    assert await wait_for(proc.wait()) == code
    assert proc.returncode == code
    assert reaped(proc.pid)


async def test_signal_after_exit():
    proc = await asyncio.create_subprocess_exec("true")
    assert await proc.wait() == 0
    # The transport lets go of the process in connection_lost, which asyncio
    # schedules with call_soon when it sees the exit. wait() returns at once
    # when the exit was seen before it was called (a quick child like `true`
    # can be), so that callback may still be queued: one turn of the loop
    # runs it. Without this turn asyncio's own loop on 3.14/3.15 let kill()
    # through 8 times in 10,000 (tonio_loop 0).
    await asyncio.sleep(0)
    with pytest.raises(ProcessLookupError):
        proc.kill()
    with pytest.raises(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    assert await proc.wait() == 0     # wait again: the same answer
    assert proc.returncode == 0


async def test_transport_signal_after_connection_lost():
    loop = asyncio.get_running_loop()
    tr, pr = await loop.subprocess_exec(ProcRecorder, "true")
    await wait_for(pr.done)
    assert tr.get_returncode() == 0
    for send in (tr.kill, tr.terminate, lambda: tr.send_signal(signal.SIGTERM)):
        with pytest.raises(ProcessLookupError):
            send()


async def test_child_exits_before_anyone_waits():
    proc = await asyncio.create_subprocess_exec("true", stdout=PIPE)
    await asyncio.sleep(0.3)        # exited and reaped meanwhile
    assert reaped(proc.pid)
    assert await proc.stdout.read() == b""
    assert await proc.wait() == 0


async def test_exit_seen_by_subprocess_module_first():
    # Popen.poll() (from send_signal() on 3.11/3.12, or a plain poll) may
    # reap the child before the loop does: the status must survive. The
    # loop is blocked meanwhile, so the subprocess module surely wins.
    proc = await asyncio.create_subprocess_exec(*py("import sys; sys.exit(5)"))
    popen = proc._transport.get_extra_info("subprocess")
    assert isinstance(popen, subprocess.Popen)
    deadline = time.monotonic() + 10
    while popen.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    code = await wait_for(proc.wait())
    if is_tonio():
        assert (popen.returncode, code) == (5, 5)
    else:
        # asyncio's waitpid thread (3.11) races with poll(): whoever loses
        # sees ECHILD, and reads it as 0 (Popen) or 255 (asyncio)
        assert (popen.returncode, code) in ((5, 5), (5, 255), (0, 5))


# ---- errors ---------------------------------------------------------------------------

async def test_missing_executable():
    with pytest.raises(FileNotFoundError):
        await asyncio.create_subprocess_exec("/nonexistent/program", stdin=PIPE, stdout=PIPE)
    with tempfile.NamedTemporaryFile() as f:     # not executable
        with pytest.raises(PermissionError):
            await asyncio.create_subprocess_exec(f.name, stdout=PIPE, stderr=PIPE)
    with pytest.raises(FileNotFoundError):
        await asyncio.create_subprocess_exec("true", cwd="/nonexistent/dir")


async def test_argument_errors():
    loop = asyncio.get_running_loop()
    proto = asyncio.SubprocessProtocol
    for kwargs, message in [({"universal_newlines": True}, "universal_newlines must be False"),
                            ({"shell": True}, "shell must be False"),
                            ({"bufsize": 1}, "bufsize must be 0"),
                            ({"text": True}, "text must be False"),
                            ({"encoding": "utf-8"}, "encoding must be None"),
                            ({"errors": "strict"}, "errors must be None")]:
        with pytest.raises(ValueError, match=message):
            await loop.subprocess_exec(proto, "true", **kwargs)
    with pytest.raises(ValueError, match="cmd must be a string"):
        await loop.subprocess_shell(proto, ["true"])
    with pytest.raises(ValueError, match="shell must be True"):
        await loop.subprocess_shell(proto, "true", shell=False)
    with pytest.raises(TypeError):
        await loop.subprocess_exec(proto, "true", no_such_popen_argument=1)


def test_closed_loop(loop):
    loop.close()
    coro = loop.subprocess_exec(asyncio.SubprocessProtocol, "true")
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.run_until_complete(coro)
    coro.close()


@pytest.mark.allow_fd_leak     # asyncio 3.12+'s PidfdChildWatcher leaks its pidfd here
def test_loop_closed_while_child_runs(make_loop, is_tonio):
    fds_before = set(os.listdir("/proc/self/fd"))
    loop = make_loop()

    async def start():
        return await asyncio.create_subprocess_exec("sleep", "30")

    proc = loop.run_until_complete(start())
    pid = proc.pid
    transport = proc._transport
    transport.close()      # kills the child
    loop.close()           # before the loop heard of its exit
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        pass               # asyncio 3.11's watcher thread reaped it
    else:
        assert os.waitstatus_to_exitcode(status) == -signal.SIGKILL
    del proc, transport
    if is_tonio:
        # the loop closed its pidfd and its pipes
        import gc
        gc.collect()
        assert set(os.listdir("/proc/self/fd")) <= fds_before


# ---- the transport and protocol -------------------------------------------------------

class ProcRecorder(asyncio.SubprocessProtocol):
    def __init__(self):
        self.events = []
        self.data = {1: b"", 2: b""}
        self.done = asyncio.get_running_loop().create_future()
        self.transport = None

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport

    def pipe_data_received(self, fd, data):
        if not self.events or self.events[-1] != ("data", fd):
            self.events.append(("data", fd))
        self.data[fd] += data

    def pipe_connection_lost(self, fd, exc):
        self.events.append(("pipe lost", fd, exc))

    def process_exited(self):
        self.events.append(("exited", self.transport.get_returncode()))

    def connection_lost(self, exc):
        self.events.append(("lost", exc))
        self.done.set_result(None)


async def test_protocol_callbacks_and_transport_api():
    loop = asyncio.get_running_loop()
    tr, pr = await loop.subprocess_exec(
        ProcRecorder, *py("import sys; sys.stdout.write(sys.stdin.read()); sys.exit(4)"))
    assert isinstance(tr, asyncio.SubprocessTransport)
    assert tr.get_pid() == tr.get_extra_info("subprocess").pid
    assert tr.get_returncode() is None and not tr.is_closing()
    stdin = tr.get_pipe_transport(0)
    assert isinstance(stdin, asyncio.WriteTransport)
    assert isinstance(tr.get_pipe_transport(1), asyncio.ReadTransport)
    assert tr.get_pipe_transport(3) is None
    assert f"pid={tr.get_pid()} running" in repr(tr)
    stdin.write(b"echoed")
    stdin.close()
    await wait_for(pr.done)
    assert pr.data == {1: b"echoed", 2: b""}
    assert pr.events[0] == "made"
    assert pr.events[-1] == ("lost", None)
    assert ("exited", 4) in pr.events
    assert sorted(e[1] for e in pr.events if e[0] == "pipe lost") == [0, 1, 2]
    assert pr.events.index(("data", 1)) < pr.events.index(("pipe lost", 1, None))
    assert tr.get_returncode() == 4
    assert f"returncode=4" in repr(tr)
    tr.close()
    assert tr.is_closing()


async def test_transport_close_kills_child():
    loop = asyncio.get_running_loop()
    tr, pr = await loop.subprocess_exec(ProcRecorder, "sleep", "30",
                                        stdin=None, stdout=None, stderr=None)
    pid = tr.get_pid()
    tr.close()
    await wait_for(pr.done)
    assert tr.get_returncode() == -signal.SIGKILL
    assert reaped(pid)


async def test_other_subprocess_users_undisturbed():
    # blocking subprocess.run() and a Popen the loop knows nothing about,
    # while the loop has children of its own
    mine = await asyncio.create_subprocess_exec(*py("import time; time.sleep(0.3)"))
    theirs = subprocess.Popen(py("import sys; sys.exit(9)"))
    assert subprocess.run(py("import sys; sys.exit(6)")).returncode == 6
    await asyncio.sleep(0.1)
    assert theirs.wait(timeout=10) == 9
    assert await wait_for(mine.wait()) == 0


def test_loop_in_another_thread(loop_name):
    from .conftest import LOOP_FACTORIES

    result = []

    async def main():
        proc = await asyncio.create_subprocess_exec(*CAT, stdin=PIPE, stdout=PIPE)
        result.append(await proc.communicate(b"from a thread"))

    def run():
        with asyncio.Runner(loop_factory=LOOP_FACTORIES[loop_name]) as runner:
            runner.run(main())

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert result == [(b"from a thread", None)]


# ---- many children --------------------------------------------------------------------

async def test_many_concurrent_children():
    async def one(i):
        proc = await asyncio.create_subprocess_exec(*CAT, stdin=PIPE, stdout=PIPE, stderr=PIPE)
        payload = b"%d " % i * (1000 + i)
        out, err = await proc.communicate(payload)
        return out == payload and err == b"" and proc.returncode == 0, proc.pid

    results = await wait_for(asyncio.gather(*(one(i) for i in range(200))), 60)
    assert all(ok for ok, _ in results)
    assert all(reaped(pid) for _, pid in results)


async def test_without_pidfds(monkeypatch):
    """Where the kernel has no pidfd_open() (Linux < 5.3, or a seccomp
    sandbox refusing it), a thread waits for each child instead."""
    if not is_tonio():
        pytest.skip("asyncio picks its child watcher once per policy, not per child")

    def no_pidfd(pid, flags=0):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    procs = [await asyncio.create_subprocess_exec(*CAT, stdin=PIPE, stdout=PIPE)
             for _ in range(3)]
    results = await wait_for(asyncio.gather(*(p.communicate(b"%d" % i)
                                              for i, p in enumerate(procs))))
    assert results == [(b"0", None), (b"1", None), (b"2", None)]
    assert [p.returncode for p in procs] == [0, 0, 0]
    killed = await asyncio.create_subprocess_exec("sleep", "30")
    killed.kill()
    assert await wait_for(killed.wait()) == -signal.SIGKILL
    assert await _threads_gone()       # each thread ends with its child


async def _threads_gone():
    for _ in range(100):
        if not any(t.name.startswith("tonio_loop waitpid") for t in threading.enumerate()):
            return True
        await asyncio.sleep(0.01)
    return False


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="asyncio's child watchers are gone")
def test_fast_child_watcher_returncodes(loop):
    """asyncio's FastChildWatcher reaps every child of the process
    (waitpid(-1)) on SIGCHLD: a loop must take the exit status from it, as
    asyncio's does, or its children report 255 ("exit status already
    read")."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        watcher = asyncio.FastChildWatcher()
        asyncio.set_child_watcher(watcher)
    watcher.attach_loop(loop)

    async def one(code):
        proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", f"exit {code}")
        return await proc.wait()

    async def main():
        return await asyncio.gather(*(one(i % 7) for i in range(80)))

    try:
        assert loop.run_until_complete(asyncio.wait_for(main(), 30)) == [i % 7 for i in range(80)]
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_child_watcher(None)
