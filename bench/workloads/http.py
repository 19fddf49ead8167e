"""HTTP through uvicorn beyond `http_uvicorn` (bench/workloads/echo.py): a
JSON answer serialized per request, many connections at once, and h11's
pure-Python parser instead of httptools.

The server runs in its own process on one CPU, wrk (or bench/loadgen.c)
on the other; see bench/net.py's measure_uvicorn.
"""

from bench import net
from bench.registry import workload


@workload("http_uvicorn_json", group="http", unit="requests/s")
def http_uvicorn_json(new_loop, quick):
    """uvicorn + httptools, a JSON object serialized per request, 10 connections"""
    return net.measure_uvicorn(new_loop, app="bench.http_app:json_app", quick=quick)


@workload("http_uvicorn_100c", group="http", unit="requests/s")
def http_uvicorn_100c(new_loop, quick):
    """uvicorn + httptools, 'Hello, world!' over 100 keep-alive connections"""
    return net.measure_uvicorn(new_loop, quick=quick, conns=100)


@workload("http_uvicorn_h11", group="http", unit="requests/s")
def http_uvicorn_h11(new_loop, quick):
    """uvicorn + h11 (pure Python HTTP), 'Hello, world!', 10 connections"""
    return net.measure_uvicorn(new_loop, quick=quick, http="h11")


# In-process, a fixed number of requests: what `python -m bench --callgrind`
# counts instructions of (see net.measure_uvicorn_requests).

@workload("http_uvicorn_requests", group="http", unit="requests/s", callgrind=True)
def http_uvicorn_requests(new_loop, quick):
    """uvicorn in-process, 'Hello, world!': a fixed number of requests, 10 connections"""
    return net.measure_uvicorn_requests(new_loop, "app", quick=quick)


@workload("http_uvicorn_json_requests", group="http", unit="requests/s", callgrind=True)
def http_uvicorn_json_requests(new_loop, quick):
    """uvicorn in-process, JSON per request: a fixed number of requests, 10 connections"""
    return net.measure_uvicorn_requests(new_loop, "json_app", quick=quick)
