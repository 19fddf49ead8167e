"""The OS surface: a UDP echo server, and spawning children that talk
through pipes.

udp_echo_*: create_datagram_endpoint with an echo DatagramProtocol, loaded
by bench/loadgen.c in its udp mode (10 connected UDP sockets, one datagram
in flight each) from its own CPU, like the TCP echo workloads; the server's
CPU time per datagram is reported next to the rate.

subprocess_communicate: asyncio.create_subprocess_exec("cat") with stdin
and stdout pipes, communicate() 1 KiB through it and wait for the exit,
8 children at a time. The parent's CPU time per child is reported too
(fork/exec and the child's own work are not the loop's, and dominate the
rate).
"""

import asyncio
import shutil
import subprocess
import time

from bench import net
from bench.registry import scale, workload


class EchoDatagramProtocol(asyncio.DatagramProtocol):
    """Sends every datagram back where it came from."""

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


async def serve_udp(loop):
    transport, _ = await loop.create_datagram_endpoint(
        EchoDatagramProtocol, local_addr=("127.0.0.1", 0))

    async def close():
        transport.close()

    return transport.get_extra_info("sockname")[1], close


def _udp_echo(new_loop, quick, size):
    return net.measure_server(new_loop, serve_udp, mode="udp", size=size, quick=quick)


@workload("udp_echo_64", group="os", unit="datagrams/s", quick=True)
def udp_echo_64(new_loop, quick):
    """UDP echo endpoint, 64-byte datagrams, 10 client sockets"""
    return _udp_echo(new_loop, quick, 64)


@workload("udp_echo_1k", group="os", unit="datagrams/s")
def udp_echo_1k(new_loop, quick):
    """UDP echo endpoint, 1 KiB datagrams, 10 client sockets"""
    return _udp_echo(new_loop, quick, 1024)


@workload("subprocess_communicate", group="os", unit="children/s", quick=True)
def subprocess_communicate(new_loop, quick):
    """create_subprocess_exec('cat') + communicate(1 KiB) + exit, 8 at a time"""
    cat = shutil.which("cat")
    payload = b"x" * 1024
    n = max(8, scale(300 if quick else 1500))
    concurrency = 8
    loop = new_loop()

    async def one():
        proc = await asyncio.create_subprocess_exec(
            cat, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        out, _ = await proc.communicate(payload)
        if out != payload or proc.returncode != 0:
            raise RuntimeError(f"cat answered {len(out)} bytes, exit {proc.returncode}")

    async def worker(count):
        for _ in range(count):
            await one()

    async def run(total):
        per = total // concurrency
        await asyncio.gather(*(worker(per) for _ in range(concurrency)))
        return per * concurrency

    try:
        loop.run_until_complete(run(concurrency * 4))      # warm-up
        cpu0, t0 = time.process_time(), time.perf_counter()
        ops = loop.run_until_complete(run(n))
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    finally:
        loop.close()
    return {"ops": ops, "seconds": elapsed, "cpu_seconds": cpu}
