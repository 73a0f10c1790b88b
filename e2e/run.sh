#!/usr/bin/env bash
# End-to-end: the release binary on a fresh SQLite, driven by the official `openai` and
# `anthropic` Python SDKs, the `websockets` client (the agent bus), and the `mcp` SDK with
# the `mcp-server-time` server (MCP tools) from PyPI in a throwaway virtualenv.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release --quiet --manifest-path "$root/Cargo.toml"
if ! python3 -m venv "$work/venv" || ! "$work/venv/bin/pip" install --quiet openai anthropic websockets mcp-server-time; then
  echo "e2e: could not install the openai and anthropic SDKs and websockets from PyPI; end-to-end check skipped"
  exit 0
fi

key="lw-e2e-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
cd "$work"
LOWART_ADMIN_KEY="$key" LOWART_SERVER__LISTEN=127.0.0.1:0 LOWART_TELEMETRY__LOG_FORMAT=json \
  LOWART_MCP__ALLOWED_COMMANDS="[\"$work/venv/bin/mcp-server-time\"]" \
  "$root/target/release/lowart" 2> "$work/log" > /dev/null &
pid=$!
for _ in $(seq 1 100); do
  addr="$(grep -o '"addr":"[^"]*"' "$work/log" | head -n1 | cut -d'"' -f4 || true)"
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$work/log"; echo "e2e: the gateway did not start"; exit 1; }

for check in openai_sdk_check.py anthropic_sdk_check.py bus_check.py mcp_check.py; do
  LOWART_URL="http://$addr" LOWART_KEY="$key" MCP_TIME="$work/venv/bin/mcp-server-time" \
    "$work/venv/bin/python" "$root/e2e/$check"
done
kill -TERM "$pid"
wait "$pid"
echo "e2e: the gateway exited cleanly after SIGTERM"
