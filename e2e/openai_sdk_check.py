"""Drives a running Lowart with the official `openai` Python SDK, unmodified.

Usage: LOWART_URL=http://127.0.0.1:PORT LOWART_KEY=lw-... python openai_sdk_check.py
Exits non-zero on the first mismatch.
"""

import json
import base64
import os
import sys
import urllib.request

import openai

base = os.environ["LOWART_URL"].rstrip("/") + "/v1"
client = openai.OpenAI(base_url=base, api_key=os.environ["LOWART_KEY"], max_retries=0)

models = [m.id for m in client.models.list()]
assert "mock" in models, models

raw = client.chat.completions.with_raw_response.create(
    model="mock", messages=[{"role": "user", "content": "Hello from the SDK"}]
)
assert raw.headers.get("x-request-id"), "x-request-id header"
completion = raw.parse()
assert completion.choices[0].message.content == "Hello from the SDK", completion
assert completion.usage.completion_tokens == 4, completion.usage

stream = client.chat.completions.create(
    model="mock",
    messages=[{"role": "user", "content": "stream these four words"}],
    stream=True,
    stream_options={"include_usage": True},
)
text, usage = "", None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage:
        usage = chunk.usage
assert text == "stream these four words", text
assert usage is not None and usage.completion_tokens == 4, usage

embeddings = client.embeddings.create(model="mock", input=["a b", "c"])
assert len(embeddings.data) == 2, embeddings
assert [e.index for e in embeddings.data] == [0, 1], embeddings.data
assert all(len(e.embedding) > 0 for e in embeddings.data), embeddings.data
assert embeddings.usage.prompt_tokens > 0, embeddings.usage

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    sys.exit("expected NotFoundError")
except openai.NotFoundError as e:
    assert e.code == "model_not_found", e.body

try:
    client.chat.completions.create(model="mock", messages=[])
    sys.exit("expected BadRequestError")
except openai.BadRequestError as e:
    assert e.param == "messages", e.body

bad = openai.OpenAI(base_url=base, api_key="lw-wrong", max_retries=0)
try:
    bad.models.list()
    sys.exit("expected AuthenticationError")
except openai.AuthenticationError as e:
    assert e.code == "invalid_api_key", e.body

# Limits: a user with RPM 2 and a small token quota, its key used by the SDK.
def admin_post(path, body):
    request = urllib.request.Request(
        os.environ["LOWART_URL"].rstrip("/") + path,
        data=json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {os.environ['LOWART_KEY']}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request) as answer:
        return json.load(answer)


admin_post("/admin/users/quota", {"user_id": "e2e-limited", "rpm_limit": 2})
key = admin_post("/admin/keys", {"user_id": "e2e-limited"})["key"]
limited = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
for remaining in ["1", "0"]:
    raw = limited.chat.completions.with_raw_response.create(
        model="mock", messages=[{"role": "user", "content": "limited"}]
    )
    assert raw.headers["x-ratelimit-limit-requests"] == "2", raw.headers
    assert raw.headers["x-ratelimit-remaining-requests"] == remaining, raw.headers
try:
    limited.chat.completions.create(model="mock", messages=[{"role": "user", "content": "x"}])
    sys.exit("expected RateLimitError")
except openai.RateLimitError as e:
    assert e.code == "rate_limited", e.body
    assert int(e.response.headers["retry-after"]) >= 1, e.response.headers

admin_post("/admin/users/quota", {"user_id": "e2e-spent", "token_quota": 1})
key = admin_post("/admin/keys", {"user_id": "e2e-spent"})["key"]
try:
    openai.OpenAI(base_url=base, api_key=key, max_retries=0).chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "x"}]
    )
    sys.exit("expected RateLimitError (insufficient_quota)")
except openai.RateLimitError as e:
    assert e.code == "insufficient_quota", e.body
    assert e.type == "insufficient_quota", e.body

# Images: the SDK's images.generate against the mock's PNG, as base64 and as a URL on the
# gateway (fetched with the same key).
image = client.images.generate(model="mock", prompt="a lighthouse", response_format="b64_json")
png = base64.b64decode(image.data[0].b64_json)
assert png[:8] == b"\x89PNG\r\n\x1a\n", png[:8]
image = client.images.generate(model="mock", prompt="a lighthouse", n=2)
assert len(image.data) == 2 and image.data[1].url.startswith(base.removesuffix("/v1")), image
fetched = urllib.request.Request(
    image.data[1].url, headers={"Authorization": f"Bearer {os.environ['LOWART_KEY']}"}
)
with urllib.request.urlopen(fetched) as answer:
    assert answer.headers["content-type"] == "image/png" and answer.read() == png

# An async chat job through the SDK (the job fields go in `extra_body`), then its result.
raw = client.chat.completions.with_raw_response.create(
    model="mock", messages=[{"role": "user", "content": "later, please"}],
    extra_body={"async": True},
)
assert raw.http_response.status_code == 202, raw.http_response.status_code
job_id = raw.http_response.json()["job_id"]
# Its events stream ends with the job's final state.
events = urllib.request.Request(
    f"{base}/jobs/{job_id}/events",
    headers={"Authorization": f"Bearer {os.environ['LOWART_KEY']}"},
)
with urllib.request.urlopen(events, timeout=30) as answer:
    text = answer.read().decode()
assert "event: done" in text, text
job = client.get(f"/jobs/{job_id}", cast_to=object)
assert job["status"] == "succeeded", job
assert job["result"]["choices"][0]["message"]["content"] == "later, please", job

print(f"openai {openai.__version__} SDK check: 11 checks passed against {base}")
