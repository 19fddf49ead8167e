"""The ASGI application the uvicorn tests serve (in a child process).

    GET  /json            {"pid", "loop", "path", "query", "lifespan"} as JSON
    POST /echo            the request body back, chunk by chunk as it arrives
    GET  /stream?n=&size= n chunks of size bytes (chunk i filled with byte i % 256)
    GET  /slow?s=         answers after s seconds; prints "slow <pid>" to stdout
                          when the request has arrived
    GET  /block?s=        prints "block <pid>", blocks its worker's loop for s
                          seconds (time.sleep), then answers with the pid: a
                          blocked worker cannot accept, so the next connection
                          goes to another worker
    WS   /ws              echoes text and bytes; the text "close <code>" closes
                          the connection with that code

The lifespan protocol runs too: startup starts a ticker task on the server's
loop, shutdown stops it and prints "shutdown <pid> <ticks>".
"""

import asyncio
import json
import os
import sys
import time
from urllib.parse import parse_qs

_state = {"ticks": 0, "ticker": None}


def _print(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _ticker():
    while True:
        await asyncio.sleep(0.01)
        _state["ticks"] += 1


async def _lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            _state["ticker"] = asyncio.get_running_loop().create_task(_ticker())
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            ticker = _state["ticker"]
            ticker.cancel()
            try:
                await ticker
            except asyncio.CancelledError:
                pass
            _print(f"shutdown {os.getpid()} {_state['ticks']}")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _websocket(receive, send):
    message = await receive()
    assert message["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is not None and text.startswith("close "):
            await send({"type": "websocket.close", "code": int(text.split()[1])})
            return
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


async def _start(send, status=200, content_type=b"application/octet-stream", length=None):
    headers = [(b"content-type", content_type)]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def _json(send, obj):
    body = json.dumps(obj).encode()
    await _start(send, content_type=b"application/json", length=len(body))
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    if scope["type"] == "websocket":
        return await _websocket(receive, send)

    path = scope["path"]
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    if path == "/echo":
        await _start(send)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            if message.get("body"):
                await send({"type": "http.response.body", "body": message["body"],
                            "more_body": True})
            if not message.get("more_body"):
                break
        await send({"type": "http.response.body", "body": b""})
        return

    # the other endpoints ignore the request body, but read it all
    while (await receive()).get("more_body"):
        pass
    if path == "/json":
        loop = asyncio.get_running_loop()
        await _json(send, {"pid": os.getpid(), "loop": type(loop).__module__,
                           "path": path, "query": query,
                           "lifespan": _state["ticker"] is not None})
    elif path == "/stream":
        n, size = int(query.get("n", 10)), int(query.get("size", 1024))
        await _start(send, length=n * size)
        for i in range(n):
            await send({"type": "http.response.body", "body": bytes([i % 256]) * size,
                        "more_body": i < n - 1})
            await asyncio.sleep(0)
    elif path == "/slow":
        _print(f"slow {os.getpid()}")
        await asyncio.sleep(float(query.get("s", 1)))
        await _json(send, {"pid": os.getpid(), "slept": float(query.get("s", 1))})
    elif path == "/block":
        _print(f"block {os.getpid()}")
        time.sleep(float(query.get("s", 0.3)))
        await _json(send, {"pid": os.getpid(),
                           "loop": type(asyncio.get_running_loop()).__module__})
    else:
        await _start(send, status=404, content_type=b"text/plain", length=9)
        await send({"type": "http.response.body", "body": b"not found"})
