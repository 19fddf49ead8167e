"""The ASGI applications of the HTTP benchmarks: `app` answers a fixed
plain text, `json_app` serializes a small object per request (TechEmpower's
"JSON" test).

Served by uvicorn, so what differs between runs is the event loop under it
(`uvicorn bench.http_app:app --loop tonio_loop:new_event_loop`).
"""

import json

BODY = b"Hello, world!"
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


JSON_HEADERS = [(b"content-type", b"application/json")]


async def json_app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = json.dumps({"message": "Hello, world!", "path": scope["path"]}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": JSON_HEADERS + [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
