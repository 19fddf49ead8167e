"""TLS servers under load: the Protocol echo server of echo.py behind
create_server(ssl=...) at 1, 10 and 100 KiB, and full handshakes per second.

The load comes from bench/tls_loadgen.c (OpenSSL, epoll, its own CPU):
TLS 1.3 with the loop's ssl.SSLContext on the server side, the same
self-signed EC P-256 certificate for every loop (bench/net.py).
"""

from bench import net
from bench.registry import workload
from bench.workloads.echo import EchoProtocol


def _serve():
    return net.serve_protocol(EchoProtocol, ssl=net.tls_server_context)


def _echo(new_loop, quick, size):
    return net.measure_server(new_loop, _serve(), mode="echo", size=size, quick=quick,
                              client="tls_loadgen")


@workload("echo_tls_1k", group="tls", unit="requests/s", quick=True)
def echo_tls_1k(new_loop, quick):
    """TLS echo server (create_server(ssl=...)), 1 KiB messages, 10 connections"""
    return _echo(new_loop, quick, 1024)


@workload("echo_tls_10k", group="tls", unit="requests/s")
def echo_tls_10k(new_loop, quick):
    """TLS echo server, 10 KiB messages, 10 connections"""
    return _echo(new_loop, quick, 10 * 1024)


@workload("echo_tls_100k", group="tls", unit="requests/s")
def echo_tls_100k(new_loop, quick):
    """TLS echo server, 100 KiB messages, 10 connections"""
    return _echo(new_loop, quick, 100 * 1024)


@workload("tls_handshake", group="tls", unit="handshakes/s")
def tls_handshake(new_loop, quick):
    """Full TLS 1.3 handshakes (no resumption), 10 at a time, each closed with close_notify"""
    return net.measure_server(new_loop, _serve(), mode="handshake", size=1, quick=quick,
                              client="tls_loadgen")
