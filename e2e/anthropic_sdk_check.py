"""Drives a running Lowart's `POST /v1/messages` with the official `anthropic` Python SDK,
unmodified, against the built-in `mock` model (it echoes the last user message; offered
tools, it calls the first one with {"input": <last user text>}; given tool results, it
echoes the last one).

Usage: LOWART_URL=http://127.0.0.1:PORT LOWART_KEY=lw-... python anthropic_sdk_check.py
Exits non-zero on the first mismatch.
"""

import os
import sys

import anthropic

# The SDK appends /v1/messages itself.
base = os.environ["LOWART_URL"].rstrip("/")
client = anthropic.Anthropic(base_url=base, api_key=os.environ["LOWART_KEY"], max_retries=0)
checks = 0

prompt = "Hello from the Anthropic SDK"
message = client.messages.create(
    model="mock", max_tokens=64, messages=[{"role": "user", "content": prompt}]
)
assert message.type == "message" and message.role == "assistant", message
assert [b.type for b in message.content] == ["text"], message.content
assert message.content[0].text == prompt, message.content
assert message.stop_reason == "end_turn", message.stop_reason
assert message.usage.input_tokens > 0, message.usage
assert message.usage.output_tokens == 5, message.usage
checks += 1

prompt = "stream these four words"
with client.messages.stream(
    model="mock", max_tokens=64, messages=[{"role": "user", "content": prompt}]
) as stream:
    text = "".join(stream.text_stream)
    final = stream.get_final_message()
assert text == prompt, text
assert final.stop_reason == "end_turn", final.stop_reason
assert final.usage.output_tokens > 0, final.usage
assert final.content[0].text == prompt, final.content
checks += 1

tools = [
    {
        "name": "get_weather",
        "description": "Current weather in a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]
prompt = "weather in Paris?"
asked = client.messages.create(
    model="mock", max_tokens=64, tools=tools, messages=[{"role": "user", "content": prompt}]
)
assert asked.stop_reason == "tool_use", asked
uses = [b for b in asked.content if b.type == "tool_use"]
assert len(uses) == 1, asked.content
assert uses[0].name == "get_weather", uses[0]
assert uses[0].input == {"input": prompt}, uses[0].input
assert uses[0].id, uses[0]
checks += 1

answered = client.messages.create(
    model="mock",
    max_tokens=64,
    tools=tools,
    messages=[
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": asked.content},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": uses[0].id, "content": "sunny, 21C"}
            ],
        },
    ],
)
assert answered.stop_reason == "end_turn", answered
assert [b.type for b in answered.content] == ["text"], answered.content
assert answered.content[0].text == "sunny, 21C", answered.content
checks += 1

try:
    client.messages.create(
        model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "x"}]
    )
    sys.exit("expected NotFoundError")
except anthropic.NotFoundError as e:
    assert e.body["error"]["type"] == "not_found_error", e.body
checks += 1

bad = anthropic.Anthropic(base_url=base, api_key="lw-wrong", max_retries=0)
try:
    bad.messages.create(model="mock", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    sys.exit("expected AuthenticationError")
except anthropic.AuthenticationError as e:
    assert e.body["error"]["type"] == "authentication_error", e.body
checks += 1

print(f"anthropic {anthropic.__version__} SDK check: {checks} checks passed against {base}")
