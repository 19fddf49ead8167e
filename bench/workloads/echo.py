"""Network servers under load: a Protocol echo server at 1, 10 and 100 KiB
against the C epoll floor, and HTTP through uvicorn + httptools.

The load comes from bench/loadgen.c (wrk for HTTP when installed) on its own
CPU; see bench/net.py. An implementation without create_server shows "n/a"
in the table until it has one.
"""

import asyncio

from bench import net
from bench.registry import workload


class EchoProtocol(asyncio.Protocol):
    """Writes back whatever arrives: the simplest server a loop can run."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


def _echo(new_loop, quick, size):
    return net.measure_server(new_loop, net.serve_protocol(EchoProtocol),
                              mode="echo", size=size, quick=quick)


@workload("echo_protocol_1k", group="echo", unit="requests/s", quick=True, floor=True)
def echo_protocol_1k(new_loop, quick):
    """Protocol echo server, 1 KiB messages, 10 connections"""
    return _echo(new_loop, quick, 1024)


@workload("echo_protocol_10k", group="echo", unit="requests/s", floor=True)
def echo_protocol_10k(new_loop, quick):
    """Protocol echo server, 10 KiB messages, 10 connections"""
    return _echo(new_loop, quick, 10 * 1024)


@workload("echo_protocol_100k", group="echo", unit="requests/s", floor=True)
def echo_protocol_100k(new_loop, quick):
    """Protocol echo server, 100 KiB messages, 10 connections"""
    return _echo(new_loop, quick, 100 * 1024)


@workload("http_uvicorn", group="http", unit="requests/s", quick=True)
def http_uvicorn(new_loop, quick):
    """uvicorn + httptools, 'Hello, world!' over keep-alive, 10 connections"""
    return net.measure_uvicorn(new_loop, quick=quick)
