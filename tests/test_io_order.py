"""The order within one loop iteration: what a poll reports runs after the
callbacks that were already queued, as in asyncio (its selector's events
become handles appended behind them). aiohttp's websocket close relies on it
(test_concurrent_close_multiple_tasks): a callback queued by one task must
run before the data_received() of bytes that arrived meanwhile."""

import asyncio
import socket
import sys

import pytest

from tests.conftest import one_thread_only


@one_thread_only    # workers run the two in parallel
async def test_data_received_after_callbacks_already_queued():
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    order = []
    got = loop.create_future()

    class Proto(asyncio.Protocol):
        def data_received(self, data):
            order.append(("data_received", data))
            if not got.done():
                got.set_result(None)

    tr, _ = await loop.create_connection(Proto, sock=a)
    await asyncio.sleep(0.01)
    b.send(b"frame")                        # readable before the next poll
    loop.call_soon(order.append, "setter ran")
    await asyncio.wait_for(got, 5)
    assert order == ["setter ran", ("data_received", b"frame")]
    tr.close()
    b.close()


@one_thread_only
async def test_datagram_after_callbacks_already_queued():
    loop = asyncio.get_running_loop()
    order = []
    got = loop.create_future()

    class Proto(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            order.append(("datagram", data))
            if not got.done():
                got.set_result(None)

    tr, _ = await loop.create_datagram_endpoint(Proto, local_addr=("127.0.0.1", 0))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"d", tr.get_extra_info("sockname"))
        loop.call_soon(order.append, "queued")
        await asyncio.wait_for(got, 5)
    assert order == ["queued", ("datagram", b"d")]
    tr.close()


@one_thread_only
async def test_writer_ready_after_callbacks_already_queued():
    """add_writer's callback was always queued: it keeps that place too."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    order = []
    done = loop.create_future()

    def writable():
        order.append("writable")
        loop.remove_writer(a)
        done.set_result(None)

    loop.call_soon(order.append, "queued")
    loop.add_writer(a, writable)
    await asyncio.wait_for(done, 5)
    assert order == ["queued", "writable"]
    a.close()
    b.close()


@one_thread_only
@pytest.mark.skipif(sys.version_info < (3, 14),
                    reason="asyncio before 3.14 accepts for a cancelled sock_accept()")
async def test_sock_accept_cancelled_before_the_poll_leaves_the_connection():
    """A connection comes in while the task waiting in sock_accept() is being
    cancelled (the cancel queued before the poll): the next sock_accept()
    gets it (gh-153761: asyncio 3.14 checks the future before accepting)."""
    loop = asyncio.get_running_loop()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        task = loop.create_task(loop.sock_accept(listener))
        await asyncio.sleep(0)                  # waiting on the listener
        with socket.socket() as client:
            client.connect(listener.getsockname())
            task.cancel()                       # queued before the next poll
            with pytest.raises(asyncio.CancelledError):
                await task
            conn, _ = await asyncio.wait_for(loop.sock_accept(listener), 5)
            conn.close()
