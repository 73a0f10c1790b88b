#!/usr/bin/env bash
# End-to-end: the release binary on a fresh SQLite, driven by the official `openai` and
# `anthropic` Python SDKs, the `websockets` client (the agent bus), the `mcp` SDK with
# the `mcp-server-time` server (MCP tools) and `playwright` (the console in Debian's
# Chromium, e2e/ui_check.py) from PyPI in a throwaway virtualenv; a second
# gateway serves HTTPS with a certificate from a throwaway CA (openssl).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'kill "${pid:-}" "${tls_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release --quiet --manifest-path "$root/Cargo.toml"
if ! python3 -m venv "$work/venv" || ! PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$work/venv/bin/pip" install --quiet openai anthropic websockets mcp-server-time playwright; then
  echo "e2e: could not install the openai and anthropic SDKs and websockets from PyPI; end-to-end check skipped"
  exit 0
fi

# The address a gateway logged when it started listening (JSON logs), or nothing.
listening_on() {
  for _ in $(seq 1 100); do
    local addr
    addr="$(grep -o '"addr":"[^"]*"' "$1" | head -n1 | cut -d'"' -f4 || true)"
    [ -n "$addr" ] && { echo "$addr"; return; }
    sleep 0.1
  done
}

key="lw-e2e-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
cd "$work"
LOWART_ADMIN_KEY="$key" LOWART_SERVER__LISTEN=127.0.0.1:0 LOWART_TELEMETRY__LOG_FORMAT=json \
  LOWART_MCP__ALLOWED_COMMANDS="[\"$work/venv/bin/mcp-server-time\"]" \
  "$root/target/release/lowart" 2> "$work/log" > /dev/null &
pid=$!
addr="$(listening_on "$work/log")"
[ -n "$addr" ] || { cat "$work/log"; echo "e2e: the gateway did not start"; exit 1; }

# The HTTPS gateway: its own directory (database, master key), a leaf for localhost from
# a throwaway CA.
mkdir "$work/tls" && cd "$work/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=lowart-e2e-ca -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -subj /CN=localhost -keyout tls.key -out tls.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > leaf.ext
openssl x509 -req -in tls.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
  -extfile leaf.ext -out tls.pem 2>/dev/null
LOWART_ADMIN_KEY="$key" LOWART_SERVER__LISTEN=127.0.0.1:0 LOWART_TELEMETRY__LOG_FORMAT=json \
  LOWART_SERVER__TLS_CERT="$work/tls/tls.pem" LOWART_SERVER__TLS_KEY="$work/tls/tls.key" \
  "$root/target/release/lowart" 2> "$work/tls/log" > /dev/null &
tls_pid=$!
tls_addr="$(listening_on "$work/tls/log")"
[ -n "$tls_addr" ] || { cat "$work/tls/log"; echo "e2e: the HTTPS gateway did not start"; exit 1; }
cd "$work"

# The console in headless Chromium (Debian's, .ci/run installs it): screenshots stay in
# target/ui-shots/ after the run.
checks="openai_sdk_check.py anthropic_sdk_check.py bus_check.py mcp_check.py edges_check.py"
if [ -f "$root/e2e/ui_check.py" ]; then
  if [ -x /usr/bin/chromium ]; then
    checks="$checks ui_check.py"
    rm -rf "$root/target/ui-shots" && mkdir -p "$root/target/ui-shots"
  else
    echo "e2e: /usr/bin/chromium is missing; the console's browser test is skipped"
  fi
fi
for check in $checks; do
  LOWART_URL="http://$addr" LOWART_KEY="$key" MCP_TIME="$work/venv/bin/mcp-server-time" \
    LOWART_SHOTS="$root/target/ui-shots" PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 \
    LOWART_TLS_URL="https://localhost:${tls_addr##*:}" LOWART_CA="$work/tls/ca.pem" \
    "$work/venv/bin/python" "$root/e2e/$check"
done
[ -d "$root/target/ui-shots" ] && echo "e2e: the console's screenshots are in $root/target/ui-shots"
kill -TERM "$pid" "$tls_pid"
wait "$pid"
wait "$tls_pid"
echo "e2e: both gateways exited cleanly after SIGTERM"
