"""Drives the gateway's edges with unmodified clients: the official `openai` SDK over
HTTPS trusting only the test CA, through a passthrough route, and through a deployment
with a Rhai transform script; then `/metrics/summary` read as curl would.

Usage: LOWART_URL=http://127.0.0.1:PORT LOWART_KEY=lw-... LOWART_TLS_URL=https://localhost:PORT
       LOWART_CA=ca.pem python edges_check.py
Exits non-zero on the first mismatch.
"""

import json
import os
import time
import urllib.request

import openai

try:  # openai 3.x ships its own HTTP client, `httpx2`; 1.x and 2.x use httpx.
    import httpx2 as httpx
except ImportError:
    import httpx

base = os.environ["LOWART_URL"].rstrip("/")
key = os.environ["LOWART_KEY"]


def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        base + path,
        method=method,
        data=data,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as res:
        raw = res.read()
        return json.loads(raw) if raw else None


def streamed(client, model, text):
    out = ""
    for chunk in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            out += chunk.choices[0].delta.content
    return out


# HTTPS: a client trusting the test CA gets a completion; one trusting only the system's
# CAs is refused.
tls_base = os.environ["LOWART_TLS_URL"].rstrip("/") + "/v1"
tls = openai.OpenAI(
    base_url=tls_base,
    api_key=key,
    max_retries=0,
    http_client=httpx.Client(verify=os.environ["LOWART_CA"]),
)
answer = tls.chat.completions.create(
    model="mock", messages=[{"role": "user", "content": "over TLS"}]
)
assert answer.choices[0].message.content == "over TLS", answer
assert streamed(tls, "mock", "streamed over TLS") == "streamed over TLS"
try:
    openai.OpenAI(base_url=tls_base, api_key=key, max_retries=0).models.list()
    raise AssertionError("a client without the test CA was let in")
except openai.APIConnectionError:
    pass
print("edges: HTTPS with the test CA ok")

# A passthrough route to this gateway's own OpenAI API: the SDK's key authenticates the
# client, and the route injects the key the upstream gets.
call(
    "POST",
    "/admin/routes",
    {
        "prefix": "/relay",
        "upstream": base + "/v1",
        "inject_headers": {"authorization": f"Bearer {key}"},
        "rpm_limit": 1000,
    },
)
relay = openai.OpenAI(base_url=base + "/relay", api_key=key, max_retries=0)
answer = relay.chat.completions.create(
    model="mock", messages=[{"role": "user", "content": "through the route"}]
)
assert answer.choices[0].message.content == "through the route", answer
assert streamed(relay, "mock", "streamed through the route") == "streamed through the route"
# Usage rows are written in batches: wait for both (at most 10 s).
for _ in range(100):
    rows = call("GET", "/admin/usage?model=/relay")["data"]
    if len(rows) >= 2:
        break
    time.sleep(0.1)
assert len(rows) == 2, rows
assert all(r["status"] == 200 for r in rows), rows
assert any((r.get("total_tokens") or 0) > 0 for r in rows), rows
print("edges: passthrough route ok")

# A transform script on an OpenAI-compatible deployment (this gateway again): the request
# script shouts the last message, the response script signs the answer.
call(
    "POST",
    "/admin/scripts",
    {
        "name": "shout",
        "source": "fn on_request(req) { let last = req.messages.len() - 1;"
        " req.messages[last].content = req.messages[last].content.to_upper(); req }\n"
        'fn on_response(resp) { if "choices" in resp && resp.choices.len() > 0'
        ' && "message" in resp.choices[0] { resp.choices[0].message.content += " (shouted)"; }'
        " resp }",
    },
)
call(
    "POST",
    "/admin/models",
    {
        "model_id": "shouting",
        "vendor_type": "OpenAI",
        "base_url": base + "/v1",
        "api_key": key,
        "upstream_model": "mock",
        "request_script": "shout",
        "response_script": "shout",
    },
)
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
answer = client.chat.completions.create(
    model="shouting", messages=[{"role": "user", "content": "quiet please"}]
)
assert answer.choices[0].message.content == "QUIET PLEASE (shouted)", answer
assert streamed(client, "shouting", "quiet stream") == "QUIET STREAM"
print("edges: transform scripts ok")

# /metrics/summary, as curl or the console reads it.
with urllib.request.urlopen(base + "/metrics/summary") as res:
    summary = json.loads(res.read())
routes = {r["route"]: r["requests_1h"] for r in summary["routes"]}
assert routes.get("/relay", 0) >= 2, routes
assert routes.get("/v1/chat/completions", 0) >= 4, routes
assert summary["inflight"]["peak_1h"] >= 1, summary
assert summary["keys"], summary
print("edges: /metrics/summary ok")
