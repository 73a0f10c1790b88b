"""Drives a running Lowart's agent bus (`GET /v1/bus/ws`) with the `websockets` package
from PyPI, as an agent would: a fan-out subscriber, a publisher, a work group that acks,
and a refused private topic.

Usage: LOWART_URL=http://127.0.0.1:PORT LOWART_KEY=lw-... python bus_check.py
Exits non-zero on the first mismatch.
"""

import asyncio
import json
import os

import websockets

URL = os.environ["LOWART_URL"].replace("http", "ws", 1) + "/v1/bus/ws"
KEY = os.environ["LOWART_KEY"]


async def call(ws, frame):
    """Sends a frame with a ref; answers the ok/error for it (skipping messages)."""
    call.ref += 1
    await ws.send(json.dumps({**frame, "ref": call.ref}))
    while True:
        got = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if got.get("ref") == call.ref:
            return got


call.ref = 0


async def main():
    headers = {"Authorization": f"Bearer {KEY}"}
    async with websockets.connect(URL, additional_headers=headers) as listener, \
            websockets.connect(f"{URL}?token={KEY}") as worker, \
            websockets.connect(URL, additional_headers=headers) as publisher:
        assert (await call(listener, {"op": "subscribe", "topic": "e2e.news"}))["op"] == "ok"
        assert (await call(worker, {"op": "subscribe", "topic": "e2e.work", "group": "w"}))["op"] == "ok"
        sent = await call(publisher, {"op": "publish", "topic": "e2e.news", "payload": {"n": 1}})
        assert sent["op"] == "ok" and sent["id"], sent
        got = json.loads(await asyncio.wait_for(listener.recv(), 10))
        assert got["op"] == "message" and got["id"] == sent["id"] and got["payload"] == {"n": 1}, got
        task = await call(publisher, {"op": "publish", "topic": "e2e.work", "payload": "task"})
        got = json.loads(await asyncio.wait_for(worker.recv(), 10))
        assert got["id"] == task["id"] and got["attempt"] == 1, got
        assert (await call(worker, {"op": "ack", "id": got["id"]}))["op"] == "ok"
        # Another user's private topic: even an admin only reads it.
        refused = await call(
            worker, {"op": "publish", "topic": "users.someone-else.inbox", "payload": 1}
        )
        assert refused["op"] == "error" and refused["code"] == "forbidden", refused
        bad = await call(worker, {"op": "fly"})
        assert bad["op"] == "error" and bad["code"] == "unknown_op", bad
    print(f"websockets {websockets.__version__} bus check: 5 checks passed against {URL}")


asyncio.run(main())
