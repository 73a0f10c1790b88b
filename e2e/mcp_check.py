"""Drives a running Lowart's MCP surfaces with clients nobody here wrote: registers
`mcp-server-time` (from PyPI) as a stdio MCP server through the admin API, runs the tool
loop through the official `openai` SDK (the built-in `mock` model calls the tool it is
told to), holds a call for confirmation and confirms it, and lists and calls the tools
at `POST /mcp` with the official `mcp` Python SDK's streamable-HTTP client.

Usage: LOWART_URL=http://127.0.0.1:PORT LOWART_KEY=lw-... MCP_TIME=/path/to/mcp-server-time \
    python mcp_check.py
Exits non-zero on the first mismatch.
"""

import asyncio
import json
import os
import urllib.request

import openai
from mcp import ClientSession

try:  # mcp 2.x
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client
except ImportError:  # mcp 1.x
    from mcp.client.streamable_http import streamablehttp_client
    streamable_http_client = None

URL = os.environ["LOWART_URL"]
KEY = os.environ["LOWART_KEY"]
TIME = os.environ["MCP_TIME"]


def admin(method, path, body=None):
    request = urllib.request.Request(
        URL + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, json.loads(response.read())


def main():
    status, server = admin("POST", "/admin/mcp/register", {
        "name": "time", "command": TIME, "args": ["--local-timezone", "UTC"],
        "default_policy": "auto",
    })
    assert status == 201 and server["status"] == "running", server
    names = [t["prefixed"] for t in server["tools"]]
    assert names == ["time__convert_time", "time__get_current_time"], names
    print("mcp: registered mcp-server-time:", names)

    client = openai.OpenAI(base_url=URL + "/v1", api_key=KEY)
    tool_choice = {"type": "function", "function": {"name": "time__get_current_time"}}
    completion = client.chat.completions.create(
        model="mock",
        messages=[{"role": "user", "content": "what time is it?"}],
        tool_choice=tool_choice,
        extra_body={"mcp_servers": ["time"]},
    )
    answer = completion.choices[0].message.content
    # The mock echoes the tool's result: the real server answered (it refuses the mock's
    # made-up argument by name).
    assert completion.choices[0].finish_reason == "stop", completion
    assert "timezone" in answer, answer
    print("mcp: the tool loop ran the real server through the openai SDK")

    status, _ = admin("PUT", "/admin/mcp/time/tools/get_current_time/policy", {"policy": "confirm"})
    assert status == 200
    held = client.chat.completions.create(
        model="mock",
        messages=[{"role": "user", "content": "what time is it?"}],
        tool_choice=tool_choice,
        extra_body={"mcp_servers": ["time"]},
    )
    extra = held.model_extra or {}
    assert held.choices[0].finish_reason == "tool_calls", held
    assert extra.get("status") == "require_confirmation", extra
    pending = extra["pending_calls"]
    confirmed = client.post(
        "/tools/confirm",
        body={"session_id": extra["session_id"], "approved_ids": [pending[0]["id"]]},
        cast_to=openai.types.chat.ChatCompletion,
    )
    assert "timezone" in confirmed.choices[0].message.content, confirmed
    print("mcp: a confirm tool waited, was approved and ran")
    admin("PUT", "/admin/mcp/time/tools/get_current_time/policy", {"policy": "auto"})

    asyncio.run(mcp_client())
    status, gone = admin("DELETE", "/admin/mcp/time")
    assert status == 200 and gone["deleted"], gone


async def mcp_client():
    headers = {"Authorization": f"Bearer {KEY}"}
    if streamable_http_client is not None:
        async with create_mcp_http_client(headers=headers) as http:
            async with streamable_http_client(URL + "/mcp", http_client=http) as streams:
                text = await use_tools(streams[0], streams[1])
    else:
        async with streamablehttp_client(URL + "/mcp", headers=headers) as streams:
            text = await use_tools(streams[0], streams[1])
    print("mcp: the mcp SDK listed and called the tools at /mcp:", text[:60])


async def use_tools(read, write):
    async with ClientSession(read, write) as session:
        await session.initialize()
        tools = await session.list_tools()
        names = sorted(t.name for t in tools.tools)
        assert names == ["time__convert_time", "time__get_current_time"], names
        result = await session.call_tool("time__get_current_time", {"timezone": "UTC"})
        text = "".join(c.text for c in result.content if c.type == "text")
        assert not getattr(result, "is_error", getattr(result, "isError", None)) and "UTC" in text, result
        return text


if __name__ == "__main__":
    main()
