"""Reference-leak check for tonio_loop's C code, in the manner of regrtest -R.

    make refcheck        (a debug CPython: Debian's python3.11-dbg)

Each scenario exercises one part of the C core on a fresh loop. It runs a
few times to warm up (free lists, caches, interned strings), then several
more times while sys.gettotalrefcount() and sys.getallocatedblocks() are
sampled around each run. A scenario leaks when every measured run leaves
references behind (or more than a handful of memory blocks).
"""

import asyncio
import contextvars
import gc
import os
import socket
import sys
import threading

import tonio_loop

SCENARIOS = []


def scenario(fn):
    SCENARIOS.append(fn)
    return fn


def _noop(*args):
    pass


def _quiet(loop, context):
    pass


@scenario
def call_soon_many_args():
    loop = tonio_loop.new_event_loop()
    for i in range(200):
        loop.call_soon(_noop)
        loop.call_soon(_noop, i, "x", 3.0)
        loop.call_soon(_noop, i, 2, 3, 4, 5, 6)
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.close()


@scenario
def handles_cancelled_and_reprs():
    loop = tonio_loop.new_event_loop()
    hs = [loop.call_soon(_noop, i) for i in range(50)]
    for h in hs[::2]:
        h.cancel()
    repr(hs[1]), repr(hs[0]), hs[1]._args, hs[1]._callback
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.close()


@scenario
def timers_fire_and_cancel():
    loop = tonio_loop.new_event_loop()
    hs = [loop.call_later(0.0005 * (i % 5), _noop, i) for i in range(200)]
    for h in hs[::3]:
        h.cancel()
    hs[1] < hs[2], hs[1] == hs[2], hash(hs[4]), repr(hs[5]), hs[5].when()
    loop.call_later(float("nan"), _noop)
    inf = loop.call_later(float("inf"), _noop)
    loop.call_later(0.005, loop.stop)
    loop.run_forever()
    inf.cancel()
    pending = loop.call_later(10, _noop)   # dropped by close()
    loop.close()
    del pending


@scenario
def exceptions_in_callbacks():
    loop = tonio_loop.new_event_loop()
    loop.set_exception_handler(_quiet)

    def bad(i):
        raise ValueError(i)

    for i in range(50):
        loop.call_soon(bad, i)
        loop.call_soon(42)
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.close()


@scenario
def keyboard_interrupt_propagates():
    loop = tonio_loop.new_event_loop()

    def bad():
        raise KeyboardInterrupt

    loop.call_soon(bad)
    loop.call_soon(_noop)
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        pass
    loop.close()


@scenario
def contexts():
    var = contextvars.ContextVar("v")
    loop = tonio_loop.new_event_loop()
    ctx = contextvars.copy_context()
    for i in range(50):
        loop.call_soon(var.set, i, context=ctx)
        loop.call_soon(var.set, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.close()


@scenario
def run_until_complete_and_tasks():
    loop = tonio_loop.new_event_loop()

    async def work(n):
        for _ in range(n):
            await asyncio.sleep(0)
        return n

    async def main():
        r = await asyncio.gather(*(work(i) for i in range(20)))
        try:
            await asyncio.wait_for(asyncio.sleep(1), 0.001)
        except asyncio.TimeoutError:
            pass
        return r

    loop.run_until_complete(main())
    try:
        loop.run_until_complete(asyncio.sleep(0, result=None) if False else _raiser())
    except ValueError:
        pass
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


async def _raiser():
    raise ValueError("x")


@scenario
def debug_mode():
    loop = tonio_loop.new_event_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 10
    h = loop.call_soon(_noop, 1)
    repr(h)
    h.cancel()
    repr(h)
    loop.call_later(0.001, _noop)
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.close()


@scenario
def readers_and_writers():
    loop = tonio_loop.new_event_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    got = []

    def on_read():
        got.append(a.recv(100))
        if len(got) == 3:
            loop.stop()

    loop.add_reader(a, on_read)
    loop.add_writer(b, lambda: (b.send(b"x"), loop.remove_writer(b)))
    loop.call_soon(b.send, b"y")
    loop.call_later(0.001, b.send, b"z")
    loop.call_later(1, loop.stop)
    loop.run_forever()
    loop.remove_reader(a)
    loop.add_reader(a, _noop)     # left registered: close() drops it
    loop.close()
    a.close()
    b.close()


@scenario
def threadsafe_calls():
    loop = tonio_loop.new_event_loop()

    def worker():
        for i in range(100):
            loop.call_soon_threadsafe(_noop, i)
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=worker)
    loop.call_soon(t.start)
    loop.run_forever()
    t.join()
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.close()


@scenario
def errors_on_bad_input():
    loop = tonio_loop.new_event_loop()
    for bad in (lambda: loop.call_later(None, _noop), lambda: loop.call_at(None, _noop),
                lambda: loop.call_later("x", _noop), lambda: loop.call_soon(),
                lambda: loop.call_soon(_noop, bogus=1), lambda: loop.add_reader(-1, _noop),
                lambda: loop.add_reader("x", _noop), lambda: loop.set_task_factory(1),
                lambda: loop.set_exception_handler(1)):
        try:
            bad()
        except (TypeError, ValueError, OSError):
            pass
    loop.close()
    for bad in (lambda: loop.call_soon(_noop), lambda: loop.run_forever()):
        try:
            bad()
        except RuntimeError:
            pass


@scenario
def signal_handlers():
    import signal

    loop = tonio_loop.new_event_loop()
    got = []
    loop.add_signal_handler(signal.SIGUSR1, got.append, 1)
    loop.add_signal_handler(signal.SIGUSR2, got.append, 2)
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    loop.remove_signal_handler(signal.SIGUSR1)
    for bad in ("x", signal.SIGKILL, -5):
        try:
            loop.add_signal_handler(bad, _noop)
        except (TypeError, ValueError, RuntimeError):
            pass
    loop.close()           # removes SIGUSR2's


@scenario
def unclosed_loop_finalizer():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        loop = tonio_loop.new_event_loop()
        loop.call_soon(_noop)
        del loop
        gc.collect()


@scenario
def loop_reference_cycle():
    loop = tonio_loop.new_event_loop()
    loop.me = loop
    loop.call_soon(lambda: loop)
    loop.close()
    del loop
    gc.collect()


@scenario
def futures_every_path():
    loop = tonio_loop.new_event_loop()
    loop.set_exception_handler(_quiet)
    seen = []

    def cb(f):
        seen.append(f)

    for i in range(30):
        f = loop.create_future()
        f.add_done_callback(cb)
        f.add_done_callback(cb, context=contextvars.copy_context())
        f.add_done_callback(_noop)
        f.remove_done_callback(_noop)
        repr(f), f._callbacks
        if i % 3 == 0:
            f.set_result(("r", i))
        elif i % 3 == 1:
            f.set_exception(ValueError(i))
            f.exception()
        else:
            f.cancel(msg="m")
            f._make_cancelled_error()
        f.add_done_callback(cb)
        it = iter(f)
        it.close()
    unretrieved = loop.create_future()
    unretrieved.set_exception(KeyError())
    del unretrieved
    for bad in (lambda: f.set_result(1), lambda: f.set_exception(1),
                lambda: tonio_loop.Future(1)):
        try:
            bad()
        except Exception:
            pass
    g = tonio_loop.Future(loop=loop)
    g.__init__(loop=loop)
    g.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.close()
    seen.clear()


@scenario
def tasks_every_path():
    loop = tonio_loop.new_event_loop()
    loop.set_exception_handler(_quiet)

    async def leaf(i):
        await asyncio.sleep(0)
        if i % 4 == 1:
            raise ValueError(i)
        return i

    async def waits_forever():
        await loop.create_future()

    class Bad:
        def __await__(self):
            yield 5

    async def bad_yield():
        await Bad()

    async def main():
        tasks = [loop.create_task(leaf(i), name=f"t{i}") for i in range(20)]
        res = await asyncio.gather(*tasks, return_exceptions=True)
        t = loop.create_task(waits_forever())
        await asyncio.sleep(0)
        t.cancel("bye")
        await asyncio.gather(t, return_exceptions=True)
        try:
            await loop.create_task(bad_yield())
        except RuntimeError:
            pass
        async with asyncio.TaskGroup() as tg:
            for i in (0, 2):
                tg.create_task(leaf(i))
        try:
            await asyncio.wait_for(waits_forever(), 0.001)
        except TimeoutError:
            pass
        fut = asyncio.Future(loop=loop)      # a foreign future
        loop.call_soon(fut.set_result, 1)
        await fut
        repr(tasks[0]), tasks[0].get_stack(), tasks[1].get_name()
        return res

    loop.run_until_complete(main())
    pending = loop.create_task(waits_forever())
    loop.run_until_complete(asyncio.sleep(0))
    del pending
    try:
        tonio_loop.Task(1, loop=loop)
    except TypeError:
        pass
    loop.close()


@scenario
def task_on_foreign_loop():
    loop = asyncio.new_event_loop()

    async def body():
        fut = loop.create_future()
        loop.call_soon(fut.set_result, 1)
        await fut
        await asyncio.sleep(0)
        inner = tonio_loop.Future(loop=loop)
        loop.call_soon(inner.set_result, 2)
        return await inner

    for _ in range(10):
        loop.run_until_complete(tonio_loop.Task(body(), loop=loop))
    loop.close()


@scenario
def asyncio_meets_tonio_objects():
    """asyncio's own C code next to tonio's Future and Task, which are
    subclasses of asyncio's: asyncio tasks awaiting tonio futures and the
    reverse, all_tasks(), current_task(), instance dicts and weak references
    (they live in asyncio's part of the object), asyncio's methods called
    on tonio's objects, and 3.14's call graph."""
    import weakref

    loop = tonio_loop.new_event_loop()

    async def wait(fut):
        asyncio.current_task()
        return await fut

    async def body():
        tf = tonio_loop.Future(loop=loop)
        af = asyncio.Future(loop=loop)
        t1 = asyncio.Task(wait(tf), loop=loop)
        t2 = tonio_loop.Task(wait(af), loop=loop)
        t3 = loop.create_task(wait(t1))
        t3.note = [t1, t2]          # an instance dict with a cycle in it
        refs = weakref.WeakSet([tf, t2, t3])
        await asyncio.sleep(0)
        if hasattr(asyncio, "capture_call_graph"):
            asyncio.capture_call_graph(t1)
            asyncio.format_call_graph(t3)
        assert {t1, t2, t3} <= asyncio.all_tasks(loop)
        asyncio.Task.get_name(t3), asyncio.Future.done(tf)
        try:
            asyncio.Future.result(tf)       # asyncio's method: not initialized
        except (RuntimeError, asyncio.InvalidStateError):
            pass
        tf.set_result(1)
        af.set_result(2)
        assert await asyncio.gather(t1, t2, t3) == [1, 2, 1]
        return len(refs)

    for _ in range(5):
        loop.run_until_complete(body())
    loop.close()


@scenario
def event_core_threads():
    events = [tonio_loop._core.Event() for _ in range(20)]
    threads = [threading.Thread(target=ev.wait, args=(0.001,)) for ev in events]
    for t in threads:
        t.start()
    for ev in events[::2]:
        ev.set()
    for t in threads:
        t.join()


_TLS = {}


def _tls_contexts():
    """(server, client) SSLContexts over certificates made once by openssl."""
    if not _TLS:
        import ssl
        import tempfile

        from tests.tlsutil import make_certs
        certs = make_certs(tempfile.mkdtemp(prefix="tonio-refleaks-"))
        if certs is None:
            return None
        _TLS["certs"] = certs
    certs = _TLS["certs"]
    return certs.server_context(), certs.client_context()


@scenario
def tls_every_path():
    """TLS: echo, close_notify both ways, start_tls, a failed handshake, a
    handshake timeout, flow control."""
    import ssl

    contexts = _tls_contexts()
    if contexts is None:
        return
    server_ctx, client_ctx = contexts
    loop = tonio_loop.new_event_loop()
    loop.set_exception_handler(_quiet)

    class Echo(asyncio.Protocol):
        def connection_made(self, tr):
            self.tr = tr

        def data_received(self, data):
            self.tr.write(data)

    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0, ssl=server_ctx)
        addr = server.sockets[0].getsockname()
        r, w = await asyncio.open_connection(*addr, ssl=client_ctx, server_hostname="localhost")
        w.write(b"x" * 300_000)
        await r.readexactly(300_000)
        w.get_extra_info("peercert"), w.get_extra_info("cipher")
        w.close()
        await w.wait_closed()
        try:
            await asyncio.open_connection(*addr, ssl=client_ctx, server_hostname="wrong")
        except ssl.SSLCertVerificationError:
            pass
        # plain, then start_tls
        plain = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        r, w = await asyncio.open_connection(*plain.sockets[0].getsockname())
        try:
            await w.start_tls(client_ctx, server_hostname="localhost",
                              ssl_handshake_timeout=0.05)
        except ConnectionAbortedError:
            pass
        w.close()
        plain.close()
        server.close()
        await server.wait_closed()
        await plain.wait_closed()


@scenario
def datagrams_every_path():
    """Echo, unconnected sendto (cached and new addresses), a bad address
    (fatal), a refused peer (error_received), buffered sends, close, abort."""
    loop = tonio_loop.new_event_loop()
    loop.set_exception_handler(_quiet)

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, tr):
            self.tr = tr
            self.got = []
            self.errors = []

        def datagram_received(self, data, addr):
            self.got.append(data)
            if data.startswith(b"ping"):
                self.tr.sendto(b"pong", addr)

        def error_received(self, exc):
            self.errors.append(exc)

    async def main():
        st, sp = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        addr = st.get_extra_info("sockname")
        ct, cp = await loop.create_datagram_endpoint(Echo, remote_addr=addr)
        ut, up = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        for i in range(20):
            ct.sendto(b"ping %d" % i)
            ut.sendto(bytearray(b"ping"), addr)
            ut.sendto(memoryview(b"xping")[1:], addr)
        while len(cp.got) < 20 or len(up.got) < 40:
            await asyncio.sleep(0.001)
        try:
            ct.sendto(b"x", ("127.0.0.1", 9))
        except ValueError:
            pass
        try:
            ct.sendto("text")
        except TypeError:
            pass
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            dead = probe.getsockname()
        dt, dp = await loop.create_datagram_endpoint(Echo, remote_addr=dead)
        for _ in range(5):
            dt.sendto(b"anyone")
            await asyncio.sleep(0.002)
        bad, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        bad.sendto(b"x", ("127.0.0.1",))      # fatal: TypeError from the socket
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        bt, _ = await loop.create_datagram_endpoint(Echo, sock=a)
        bt.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        repr(st), repr(bt)
        st.close(), ct.close(), ut.close(), dt.close(), bt.abort()
        await asyncio.sleep(0.01)
        b.close()

    loop.run_until_complete(main())
    loop.close()


@scenario
def threaded_stream_writes():
    """Loop(threads=2): writes that go out whole without the loop lock,
    writes the kernel takes in part (the rest buffered), a write to a
    peer that reset, close() and abort() among writers."""
    loop = tonio_loop.new_event_loop(threads=2)
    loop.set_exception_handler(_quiet)

    async def main():
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        b.setblocking(False)
        tr, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        for i in range(20):
            tr.write(b"x" * (10 + i))           # whole, the fast way
        tr.write(b"y" * 200000)                 # in part: the rest buffered
        tr.write(bytearray(b"z" * 100))         # behind it, copied
        got = 0
        while got < sum(range(10, 30)) + 200000 + 100:
            got += len(await loop.sock_recv(b, 65536))
        tr.close()
        b.close()
        c, d = socket.socketpair()
        tr2, _ = await loop.create_connection(asyncio.Protocol, sock=c)
        tr2.write(b"hello")
        d.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        d.close()                               # a reset for the next writes
        await asyncio.sleep(0.01)
        for _ in range(3):
            tr2.write(b"after reset")
        await asyncio.sleep(0.01)
        tr2.abort()
        await asyncio.sleep(0.01)

    loop.run_until_complete(main())
    loop.close()


@scenario
def threaded_home_tasks():
    """Loop(threads=2): transports whose protocol callbacks wait for their
    home task (one that resumes reading, one a callback created, a paused
    writer), datagrams read on the strand."""
    loop = tonio_loop.new_event_loop(threads=2)

    class Serve(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            asyncio.get_running_loop().create_task(self.answer(data))

        async def answer(self, data):
            self.transport.write(data.upper())

    class Read(asyncio.Protocol):
        def __init__(self):
            self.got = asyncio.Event()
            self.data = bytearray()

        def connection_made(self, transport):
            self.transport = transport
            transport.pause_reading()

        def data_received(self, data):
            self.data += data
            self.got.set()

    async def main():
        server = await loop.create_server(Serve, "127.0.0.1", 0)
        tr, pr = await loop.create_connection(Read, *server.sockets[0].getsockname())
        for i in range(5):
            tr.write(b"ping%d" % i)
            pr.transport.resume_reading()
            await pr.got.wait()
            pr.got.clear()
            pr.transport.pause_reading()
        tr.set_write_buffer_limits(high=1024)
        tr.write(b"x" * 10000000)
        tr.close()
        server.close()
        await server.wait_closed()
        got = loop.create_future()

        class Dgram(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                if not got.done():
                    got.set_result(data)

        t1, _ = await loop.create_datagram_endpoint(Dgram, local_addr=("127.0.0.1", 0))
        t2, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=t1.get_extra_info("sockname"))
        t2.sendto(b"hello")
        await asyncio.wait_for(got, 5)
        t1.close()
        t2.close()
        await asyncio.sleep(0.01)

    loop.run_until_complete(main())
    loop.close()


@scenario
def subprocesses():
    loop = tonio_loop.new_event_loop()

    async def main():
        p = await asyncio.create_subprocess_exec(
            "cat", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        await p.communicate(b"x" * 100000)
        p = await asyncio.create_subprocess_exec("sleep", "5")
        p.kill()
        await p.wait()
        try:
            await asyncio.create_subprocess_exec("/nonexistent/program")
        except FileNotFoundError:
            pass

    loop.run_until_complete(main())
    loop.close()


def measure(fn, warmup=4, runs=6):
    for _ in range(warmup):
        fn()
    gc.collect()
    refs, blocks = [], []
    for _ in range(runs):
        gc.collect()
        r0, b0 = sys.gettotalrefcount(), sys.getallocatedblocks()
        fn()
        gc.collect()
        refs.append(sys.gettotalrefcount() - r0)
        blocks.append(sys.getallocatedblocks() - b0)
    return refs, blocks


def main():
    if not hasattr(sys, "gettotalrefcount"):
        print("refleaks.py needs a debug build of CPython (python3.11-dbg)")
        return 2
    only = set(sys.argv[1:])
    leaks = 0
    # the bookkeeping of measure() itself shows up in the counts: subtract
    # what it reports for a function that does nothing
    base_refs, base_blocks = measure(lambda: None)
    for fn in SCENARIOS:
        if only and fn.__name__ not in only:
            continue
        refs, blocks = measure(fn)
        refs = [r - b for r, b in zip(refs, base_refs)]
        blocks = [r - b for r, b in zip(blocks, base_blocks)]
        # A block or two per run comes from CPython's own caches (instance
        # dict values, method caches; RSS stays flat over 20,000 loops); a
        # real leak of ours shows as references, or as many blocks per run.
        leaked = all(r > 0 for r in refs) or min(blocks) > 10
        leaks += leaked
        print(f"{'LEAK' if leaked else 'ok  '} {fn.__name__}: refs {refs} blocks {blocks}",
              flush=True)
    print(f"{leaks} leaking scenario(s) of {len(SCENARIOS)}")
    return 1 if leaks else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONASYNCIODEBUG", "")
    sys.exit(main())
