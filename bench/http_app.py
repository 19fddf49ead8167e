"""The ASGI application of the HTTP benchmark: a fixed plain-text answer.

Served by uvicorn with httptools, so what differs between runs is the event
loop under it (`uvicorn bench.http_app:app --loop tonio_loop:new_event_loop`).
"""

BODY = b"Hello, world!"
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
