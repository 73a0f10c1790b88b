// Lowart console: one classic script, no build step. Every figure shown comes from the
// gateway's API, fetched with the signed-in key as a bearer header. See ui/README.md.
"use strict";

(function () {
  const KEY_STORE = "lowart.key";
  const POLL_MS = 3000;

  // ---- state ----
  const state = {
    key: null,
    me: null, // {user_id, key_id, role, user}
    timers: [],
    ws: null,
    wsRetry: null,
    approvals: new Map(), // session_id -> session
    approvalListeners: new Set(),
    charts: [],
  };

  // ---- DOM helpers (no innerHTML with data) ----
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (v === true) el.setAttribute(k, "");
      else el.setAttribute(k, String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const $ = (id) => document.getElementById(id);
  let uid = 0;
  const nextId = (p) => `${p}-${++uid}`;

  function field(label, input) {
    if (!input.id) input.id = nextId("f");
    return h("label", { for: input.id }, label, input);
  }
  function fmtNum(n, digits) {
    if (n === null || n === undefined) return "—";
    if (typeof n !== "number") return String(n);
    return n.toLocaleString(undefined, { maximumFractionDigits: digits ?? 2 });
  }
  function fmtUsd(n) {
    if (n === null || n === undefined) return "—";
    return "$" + n.toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 6 });
  }
  function fmtTime(ms) {
    if (!ms) return "—";
    return new Date(ms).toISOString().replace("T", " ").slice(0, 19);
  }
  function table(columns, rows, empty) {
    if (!rows.length) return h("p", { class: "muted" }, empty || "Nothing yet.");
    return h(
      "table",
      {},
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.label)))),
      h(
        "tbody",
        {},
        rows.map((r) =>
          h("tr", {}, columns.map((c) => h("td", { class: c.num ? "num" : null }, c.get(r))))
        )
      )
    );
  }
  function toast(msg) {
    const t = $("toast");
    t.textContent = msg;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => (t.textContent = ""), 5000);
  }

  // ---- API ----
  class ApiError extends Error {
    constructor(status, body) {
      const e = (body && body.error) || {};
      super(e.message || `HTTP ${status}`);
      this.status = status;
      this.code = e.code;
      this.param = e.param;
      this.detail = e;
    }
  }
  async function api(method, path, body, key) {
    // A poll still running when its page was left or the key signed out asks nothing.
    if (!key && !state.key) throw new ApiError(0, { error: { message: "signed out" } });
    const headers = { Authorization: `Bearer ${key || state.key}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
    const text = await res.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (_) {
        data = { error: { message: text.slice(0, 200) } };
      }
    }
    if (!res.ok) throw new ApiError(res.status, data);
    return data;
  }
  const get = (p) => api("GET", p);

  // ---- roles ----
  const isStaff = () => ["admin", "operator", "viewer"].includes(state.me.role);
  const canOperate = () => ["admin", "operator"].includes(state.me.role);
  const isAdmin = () => state.me.role === "admin";

  async function whoAmI(key) {
    const usage = await api("GET", "/v1/usage", undefined, key);
    let role = "user";
    let user = null;
    try {
      user = await api("GET", `/admin/users/${encodeURIComponent(usage.user_id)}`, undefined, key);
      role = user.role || "viewer";
    } catch (e) {
      if (e.status !== 403) throw e;
    }
    return { user_id: usage.user_id, key_id: usage.key_id, role, user, usage };
  }

  // ---- pages ----
  const PAGES = [
    { id: "overview", title: "My usage", show: () => true, render: renderOverview },
    { id: "monitor", title: "Monitoring", show: () => true, render: renderMonitor },
    { id: "playground", title: "Playground", show: () => true, render: renderPlayground },
    { id: "jobs", title: "Jobs", show: () => true, render: renderJobs },
    { id: "approvals", title: "Approvals", show: () => true, render: renderApprovals },
    { id: "users", title: "Users & keys", show: isStaff, render: renderUsers },
    { id: "models", title: "Models", show: isStaff, render: renderModels },
    { id: "scripts", title: "Scripts", show: isStaff, render: renderScripts },
    { id: "routes", title: "Routes", show: isStaff, render: renderRoutes },
    { id: "mcp", title: "MCP servers", show: isStaff, render: renderMcp },
    { id: "audit", title: "Audit log", show: isStaff, render: renderAudit },
  ];

  function currentPage() {
    const id = (location.hash || "").replace(/^#\/?/, "") || "overview";
    const page = PAGES.find((p) => p.id === id && p.show());
    return page || PAGES[0];
  }

  function clearPage() {
    for (const t of state.timers) clearInterval(t);
    state.timers = [];
    for (const c of state.charts) c.destroy();
    state.charts = [];
    state.approvalListeners.clear();
  }
  function every(ms, fn) {
    fn();
    state.timers.push(setInterval(fn, ms));
  }

  async function route() {
    if (!state.me) return;
    clearPage();
    const page = currentPage();
    for (const a of $("nav").querySelectorAll("a")) {
      if (a.dataset.page === page.id) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    const root = $("page");
    root.replaceChildren(h("h1", { id: "page-title" }, page.title));
    document.title = `${page.title} · Lowart console`;
    try {
      await page.render(root);
    } catch (e) {
      root.append(h("p", { class: "error", role: "alert" }, `Could not load: ${e.message}`));
    }
  }

  function errorBox() {
    return h("p", { class: "error", role: "alert" });
  }
  function showErr(box, e) {
    let msg = e.message || String(e);
    if (e.param) msg += ` (${e.param})`;
    if (e.detail && e.detail.line && !msg.includes("line")) msg += ` at line ${e.detail.line}, column ${e.detail.column}`;
    box.textContent = msg;
  }

  // -- overview: own usage and limits --
  async function renderOverview(root) {
    const u = await get("/v1/usage");
    const s = (t) =>
      h(
        "div",
        { class: "stats" },
        ["requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens"].map((k) =>
          h("div", { class: "stat" }, h("b", {}, fmtNum(t[k], 0)), k.replace("_", " "))
        ),
        h("div", { class: "stat" }, h("b", {}, fmtUsd(t.cost_usd)), "cost")
      );
    const block = (title, scope) =>
      h(
        "section",
        { class: "card", "aria-label": title },
        h("h2", {}, title),
        h("h3", {}, `Today (${u.usage.day}, UTC)`),
        s(scope.today),
        h("h3", {}, "All time"),
        s(scope.all_time)
      );
    const lim = u.limits || {};
    root.append(
      h("p", {}, "Signed in as ", h("b", {}, state.me.user_id), ` (${state.me.role}), key `, h("code", {}, u.key_id)),
      h(
        "div",
        { class: "grid" },
        block("My usage (all my keys)", u.usage.user),
        block("This key", u.usage.key)
      ),
      h(
        "section",
        { class: "card" },
        h("h2", {}, "Remaining limits"),
        table(
          [
            { label: "limit", get: (r) => r[0] },
            { label: "state", get: (r) => limitText(r[1]) },
          ],
          Object.entries(lim)
        )
      )
    );
    const [keys, perKey] = await Promise.all([get("/v1/keys"), get("/v1/usage/summary?group_by=key&since=0")]);
    const byKey = new Map(perKey.data.map((r) => [r.group, r]));
    const use = (k, f) => (byKey.get(k.id) ? byKey.get(k.id)[f] : 0);
    root.append(
      h(
        "section",
        { class: "card" },
        h("h2", {}, "My keys and their usage (all time)"),
        table(
          [
            { label: "key id", get: (k) => h("code", {}, k.id) },
            { label: "name", get: (k) => k.name || "" },
            { label: "prefix", get: (k) => h("code", {}, k.prefix || "—") },
            { label: "state", get: (k) => (k.revoked_at ? "revoked" : k.id === state.me.key_id ? "active (this one)" : "active") },
            { label: "requests", num: true, get: (k) => fmtNum(use(k, "requests"), 0) },
            { label: "errors", num: true, get: (k) => fmtNum(use(k, "errors"), 0) },
            { label: "tokens", num: true, get: (k) => fmtNum(use(k, "total_tokens"), 0) },
            { label: "cost", num: true, get: (k) => fmtUsd(byKey.get(k.id) ? byKey.get(k.id).cost_usd : 0) },
          ],
          keys.data,
          "No keys."
        )
      )
    );
  }

  function limitText(v) {
    if (v === null || v === undefined) return "no limit";
    if (typeof v !== "object") return String(v);
    return Object.entries(v)
      .map(([k, x]) => `${k.replace(/_/g, " ")} ${typeof x === "number" ? fmtNum(x) : x}`)
      .join(" · ");
  }

  // -- monitoring --
  async function renderMonitor(root) {
    const win = h("select", { id: "mon-window" }, h("option", { value: "3600" }, "last hour"), h("option", { value: "86400" }, "last day"));
    const staff = isStaff();
    const by = h(
      "select",
      { id: "mon-by" },
      (staff ? ["model", "user", "key"] : ["model", "key"]).map((g) => h("option", { value: g }, `per ${g}`))
    );
    const out = h("div", {});
    root.append(
      h("div", { class: "row card" }, field("Window", win), field("Group", by)),
      staff ? "" : h("p", { class: "muted" }, `Your own usage (${state.me.user_id}); the gateway-wide figures need an admin, operator or viewer key.`),
      out
    );
    if (staff) {
      root.append(
        h("section", { class: "card", "aria-label": "Live" }, h("h2", {}, "Live: in flight and breakers"), h("div", { id: "live-box" })),
        h("section", { class: "card" }, h("h2", {}, "Latest requests"), h("div", { id: "recent-box" }))
      );
    }

    async function summary() {
      const since = Date.now() - Number(win.value) * 1000;
      const data = (await get(`/${staff ? "admin" : "v1"}/usage/summary?group_by=${by.value}&since=${since}`)).data;
      const rows = data.slice().sort((a, b) => b.requests - a.requests);
      const top = rows.slice(0, 12); // the charts show the busiest twelve; the table has all
      for (const c of state.charts.splice(0)) c.destroy();
      const chartEl = h("div", { class: "chart" });
      const latEl = h("div", { class: "chart" });
      const tokEl = h("div", { class: "chart" });
      out.replaceChildren(
        h(
          "div",
          { class: "grid" },
          h("section", { class: "card" }, h("h2", {}, `Requests and errors per ${by.value}`), chartEl),
          h("section", { class: "card" }, h("h2", {}, `Latency p50 / p95 (ms) per ${by.value}`), latEl),
          h("section", { class: "card" }, h("h2", {}, `Tokens per ${by.value}`), tokEl)
        ),
        h(
          "section",
          { class: "card" },
          h("h2", {}, `Summary per ${by.value}`),
          table(
            [
              { label: by.value, get: (r) => h("code", {}, r.group) },
              { label: "requests", num: true, get: (r) => fmtNum(r.requests, 0) },
              { label: "errors", num: true, get: (r) => fmtNum(r.errors, 0) },
              { label: "p50 ms", num: true, get: (r) => fmtNum(r.latency_ms && r.latency_ms.p50) },
              { label: "p95 ms", num: true, get: (r) => fmtNum(r.latency_ms && r.latency_ms.p95) },
              { label: "tokens", num: true, get: (r) => fmtNum(r.total_tokens, 0) },
              { label: "cost", num: true, get: (r) => fmtUsd(r.cost_usd) },
            ],
            rows,
            "No requests in this window."
          )
        )
      );
      if (top.length) {
        const xs = top.map((_, i) => i);
        const labels = top.map((r) => r.group);
        barChart(chartEl, labels, [
          ["requests", top.map((r) => r.requests)],
          ["errors", top.map((r) => r.errors)],
        ], xs);
        barChart(latEl, labels, [
          ["p50", top.map((r) => (r.latency_ms ? r.latency_ms.p50 : null))],
          ["p95", top.map((r) => (r.latency_ms ? r.latency_ms.p95 : null))],
        ], xs);
        barChart(tokEl, labels, [
          ["prompt", top.map((r) => r.prompt_tokens)],
          ["completion", top.map((r) => r.completion_tokens)],
        ], xs);
      }
    }
    if (staff) {
      const deps = await get("/admin/models").catch(() => ({ data: [] }));
      for (const d of deps.data) modelOf.set(d.id, d.model_id);
    }
    win.addEventListener("change", summary);
    by.addEventListener("change", summary);
    await summary();
    state.timers.push(setInterval(() => summary().catch(() => {}), POLL_MS * 5));
    if (!staff) return;

    const inflight = [[], []];
    let inflightChart = null;
    const inflightEl = h("div", { class: "chart" });
    const breakerEl = h("div", {});
    const metricsNote = h("p", { class: "muted" });
    $("live-box").append(metricsNote, inflightEl, breakerEl);
    every(POLL_MS, async () => {
      try {
        const m = await get("/metrics/summary");
        const cur = m.inflight.current;
        metricsNote.textContent = `This instance: ${fmtNum(cur, 0)} in flight now (peak ${fmtNum(m.inflight.peak_1h, 0)} in the last hour, ${fmtNum(m.inflight.peak_24h, 0)} in the last day); ${fmtNum(m.requests_1h, 0)} requests in the last hour, ${fmtNum(m.requests_24h, 0)} in the last day.`;
        inflight[0].push(Date.now() / 1000);
        inflight[1].push(cur);
        if (inflight[0].length > 200) inflight.forEach((s) => s.shift());
        if (!inflightChart) inflightChart = lineChart(inflightEl, ["in flight"], inflight);
        else inflightChart.setData(inflight);
      } catch (e) {
        metricsNote.textContent = `/metrics/summary: ${e.message}`;
      }
      try {
        const b = await get("/admin/breakers");
        breakerEl.replaceChildren(breakersTable(b.data, false));
      } catch (e) {
        breakerEl.textContent = `Breakers: ${e.message}`;
      }
      try {
        const r = await get("/admin/usage?limit=15");
        $("recent-box") && $("recent-box").replaceChildren(usageRows(r.data));
      } catch (e) {
        $("recent-box") && ($("recent-box").textContent = e.message);
      }
    });
  }

  function usageRows(rows) {
    return table(
      [
        { label: "time", get: (r) => fmtTime(r.created_at) },
        { label: "request", get: (r) => h("code", { "data-request": r.request_id }, r.request_id) },
        { label: "user", get: (r) => r.user_id },
        { label: "key", get: (r) => h("code", {}, r.key_id) },
        { label: "model", get: (r) => r.model },
        { label: "deployment", get: (r) => h("code", {}, r.deployment_id || "—") },
        { label: "status", num: true, get: (r) => r.status },
        { label: "tokens", num: true, get: (r) => fmtNum(r.total_tokens, 0) },
        { label: "cost", num: true, get: (r) => fmtUsd(r.cost_usd) },
        { label: "latency ms", num: true, get: (r) => fmtNum(r.latency_ms) },
        { label: "ttft ms", num: true, get: (r) => fmtNum(r.ttft_ms) },
        { label: "stream", get: (r) => (r.stream ? "yes" : "no") },
      ],
      rows,
      "No requests yet."
    );
  }

  // ---- charts (uPlot) ----
  function chartWidth(el) {
    return Math.max(260, Math.min(el.clientWidth || 600, 900));
  }
  // Axis text and grid in the page's own colours (light or dark).
  function axis() {
    const fg = getComputedStyle(document.body).color;
    return { stroke: fg, grid: { stroke: "rgba(128,128,128,0.25)" }, ticks: { stroke: "rgba(128,128,128,0.4)" } };
  }
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"];
  function lineChart(el, names, data) {
    if (!window.uPlot) return { setData() {}, destroy() {} };
    const u = new uPlot(
      {
        width: chartWidth(el),
        height: 200,
        series: [{}].concat(names.map((n, i) => ({ label: n, stroke: COLORS[i], width: 2 }))),
        axes: [axis(), axis()],
      },
      data,
      el
    );
    state.charts.push(u);
    return u;
  }
  function barChart(el, labels, series, xs) {
    if (!window.uPlot) return;
    // Two series side by side: the first left of each tick, the second right of it.
    const bars = (i) => uPlot.paths.bars({ size: [0.35, 40], align: series.length === 1 ? 0 : i === 0 ? -1 : 1 });
    const u = new uPlot(
      {
        width: chartWidth(el),
        height: 220,
        scales: { x: { time: false, range: [-0.5, xs.length - 0.5] }, y: { range: (_u, _min, max) => [0, Math.max(1, max) * 1.1] } },
        series: [{ label: "group", value: (_u, v) => (v === null ? "" : labels[v] ?? "") }].concat(
          series.map(([name], i) => ({ label: name, fill: COLORS[i] + "aa", stroke: COLORS[i], paths: bars(i), points: { show: false } }))
        ),
        axes: [
          {
            ...axis(),
            splits: () => xs,
            values: (_u, vals) => vals.map((v) => String(labels[v] ?? "").slice(0, 16)),
            rotate: labels.length > 4 ? -35 : 0,
            size: labels.length > 4 ? 90 : 40,
          },
          axis(),
        ],
      },
      [xs].concat(series.map(([, d]) => d)),
      el
    );
    state.charts.push(u);
  }

  // Deployment id -> model id, for the breaker tables (filled from /admin/models).
  const modelOf = new Map();
  function breakersTable(rows, withButtons) {
    return table(
      [
        { label: "model", get: (r) => modelOf.get(r.deployment_id) || "" },
        { label: "deployment", get: (r) => h("code", {}, r.deployment_id) },
        { label: "state", get: (r) => h("span", { class: `badge ${r.state}`, "data-breaker": r.deployment_id }, r.state + (r.forced ? " (held)" : "")) },
        { label: "failure rate", num: true, get: (r) => fmtNum(r.failure_rate * 100, 1) + "%" },
        { label: "window", num: true, get: (r) => `${r.window_failures}/${r.window_calls}` },
        { label: "in flight", num: true, get: (r) => r.inflight },
        { label: "queued", num: true, get: (r) => r.queued },
      ].concat(
        withButtons
          ? [
              {
                label: "hold",
                get: (r) =>
                  h(
                    "span",
                    { class: "row" },
                    ["open", "closed", "auto"].map((s) =>
                      h(
                        "button",
                        {
                          type: "button",
                          class: "secondary",
                          "aria-label": `${s === "auto" ? "Release" : "Hold " + s} breaker of ${r.deployment_id}`,
                          onclick: async () => {
                            try {
                              await api("PUT", `/admin/breakers/${encodeURIComponent(r.deployment_id)}`, { state: s });
                              toast(`Breaker ${r.deployment_id}: ${s}`);
                              route();
                            } catch (e) {
                              toast(e.message);
                            }
                          },
                        },
                        s === "auto" ? "release" : `hold ${s}`
                      )
                    )
                  ),
              },
            ]
          : []
      ),
      rows,
      "No deployments."
    );
  }

  // -- playground --
  async function renderPlayground(root) {
    const models = (await get("/v1/models")).data.map((m) => m.id);
    const opt = (sel) => models.map((m) => h("option", { value: m, selected: m === sel }, m));
    const m1 = h("select", { id: "pg-model" }, opt(models[0]));
    const m2 = h("select", { id: "pg-model2" }, opt(models[1] || models[0]));
    const compare = h("input", { type: "checkbox", id: "pg-compare" });
    const sys = h("input", { id: "pg-system", placeholder: "optional", size: 30 });
    const prompt = h("textarea", { id: "pg-prompt", required: true, rows: 4 });
    const send = h("button", { type: "submit", id: "pg-send" }, "Send");
    const panes = h("div", { class: "chat" });
    const form = h(
      "form",
      { class: "card" },
      h("div", { class: "row" }, field("Model", m1), field("Compare with", m2), h("label", { for: "pg-compare" }, compare, "side by side"), field("System prompt", sys)),
      field("Prompt", prompt),
      h("p", {}, send)
    );
    m2.disabled = true;
    compare.addEventListener("change", () => (m2.disabled = !compare.checked));
    prompt.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
    });
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const targets = compare.checked ? [m1.value, m2.value] : [m1.value];
      send.disabled = true;
      panes.replaceChildren();
      const messages = [];
      if (sys.value.trim()) messages.push({ role: "system", content: sys.value });
      messages.push({ role: "user", content: prompt.value });
      await Promise.all(targets.map((m) => streamChat(m, messages, panes)));
      send.disabled = false;
    });
    if (!models.length) root.append(h("p", { class: "error" }, "This key may use no model."));
    root.append(form, panes);
  }

  async function streamChat(model, messages, panes) {
    const answer = h("div", { class: "answer", "aria-live": "polite", "data-model": model });
    const stats = h("dl", { class: "stats" });
    const err = errorBox();
    const pane = h("section", { class: "card", "aria-label": `Answer of ${model}` }, h("h2", {}, model), answer, stats, err);
    panes.append(pane);
    const t0 = performance.now();
    let ttft = null;
    let usage = null;
    const stat = (k, v) => stats.append(h("div", { class: "stat" }, h("dt", {}, k), h("dd", { "data-stat": k }, v)));
    try {
      const res = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: { Authorization: `Bearer ${state.key}`, "Content-Type": "application/json" },
        body: JSON.stringify({ model, messages, stream: true, stream_options: { include_usage: true } }),
        credentials: "omit",
      });
      if (!res.ok) {
        let body = null;
        try {
          body = await res.json();
        } catch (_) {
          /* not JSON */
        }
        throw new ApiError(res.status, body);
      }
      const deployment = res.headers.get("x-lowart-deployment");
      const requestId = res.headers.get("x-request-id");
      const reader = res.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const ev = buf.slice(0, i);
          buf = buf.slice(i + 2);
          for (const line of ev.split("\n")) {
            if (!line.startsWith("data:")) continue;
            const d = line.slice(5).trim();
            if (d === "[DONE]") continue;
            const chunk = JSON.parse(d);
            if (chunk.error) throw new ApiError(0, chunk);
            if (chunk.usage) usage = chunk.usage;
            for (const c of chunk.choices || []) {
              const text = c.delta && c.delta.content;
              if (text) {
                if (ttft === null) ttft = performance.now() - t0;
                answer.append(text);
              }
            }
          }
        }
      }
      const latency = performance.now() - t0;
      stat("deployment", h("code", {}, deployment || "—"));
      stat("request id", h("code", {}, requestId || "—"));
      stat("prompt tokens", fmtNum(usage && usage.prompt_tokens, 0));
      stat("completion tokens", fmtNum(usage && usage.completion_tokens, 0));
      stat("latency", `${fmtNum(latency, 0)} ms`);
      stat("time to first token", ttft === null ? "—" : `${fmtNum(ttft, 0)} ms`);
      const costEl = h("span", {}, "…");
      stat("cost", costEl);
      costEl.textContent = await costOf(requestId);
    } catch (e) {
      showErr(err, e);
    }
  }

  // The usage row of a request (written in batches, so it may take a moment); only staff
  // keys may read rows, others see the cost in their totals (My usage).
  async function costOf(requestId) {
    if (!isStaff() || !requestId) return "see My usage";
    for (let i = 0; i < 10; i++) {
      const rows = (await get("/admin/usage?limit=50").catch(() => ({ data: [] }))).data;
      const row = rows.find((r) => r.request_id === requestId);
      if (row) return row.cost_usd === null ? `— (${row.cost_status})` : fmtUsd(row.cost_usd);
      await new Promise((r) => setTimeout(r, 500));
    }
    return "—";
  }

  // -- jobs --
  async function renderJobs(root) {
    const box = h("div", { class: "card" });
    root.append(box);
    const path = isStaff() ? "/admin/jobs?limit=50" : "/v1/jobs?limit=50";
    every(POLL_MS, async () => {
      try {
        const jobs = (await get(path)).data;
        box.replaceChildren(
          h("h2", {}, isStaff() ? "Every user's jobs" : "My jobs"),
          table(
            [
              { label: "job", get: (j) => h("code", {}, j.id) },
              { label: "user", get: (j) => j.user_id || state.me.user_id },
              { label: "model", get: (j) => j.model },
              { label: "kind", get: (j) => j.kind },
              { label: "status", get: (j) => j.status },
              {
                label: "progress",
                get: (j) => {
                  const p = typeof j.progress === "number" ? j.progress : j.status === "succeeded" ? 1 : 0;
                  return h("progress", { max: "1", value: String(p), "aria-label": `progress of ${j.id}` }, `${Math.round(p * 100)}%`);
                },
              },
              { label: "created", get: (j) => fmtTime(j.created_at) },
            ],
            jobs,
            "No jobs."
          )
        );
      } catch (e) {
        box.replaceChildren(h("p", { class: "error" }, e.message));
      }
    });
  }

  // -- approvals: pending tool calls, live over the agent bus --
  function connectBus() {
    if (state.ws || !state.key) return;
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/bus/ws`;
    let ws;
    try {
      ws = new WebSocket(url, ["lowart.bearer", state.key]);
    } catch (_) {
      return;
    }
    state.ws = ws;
    ws.addEventListener("open", () => {
      ws.send(JSON.stringify({ op: "subscribe", topic: `approvals.${state.me.user_id}`, ref: "approvals" }));
      setBusStatus("live");
    });
    ws.addEventListener("message", (ev) => {
      let f;
      try {
        f = JSON.parse(ev.data);
      } catch (_) {
        return;
      }
      if (f.op === "error") setBusStatus(`bus error: ${f.message || f.code}`);
      if (f.op !== "message" || !f.payload) return;
      const p = f.payload;
      const id = p.session_id;
      if (!id) return;
      if (p.type === "approval.pending") state.approvals.set(id, p);
      else if (p.type === "approval.resolved") state.approvals.delete(id);
      for (const l of state.approvalListeners) l(p);
    });
    ws.addEventListener("close", () => {
      state.ws = null;
      setBusStatus("reconnecting…");
      if (state.key) state.wsRetry = setTimeout(connectBus, 3000);
    });
  }
  function setBusStatus(s) {
    state.busStatus = s;
    const el = $("bus-status");
    if (el) el.textContent = `Agent bus: ${s}`;
  }

  async function renderApprovals(root) {
    const status = h("p", { id: "bus-status", class: "muted", "aria-live": "polite" }, `Agent bus: ${state.busStatus || "connecting…"}`);
    const list = h("div", { id: "approvals-list" });
    const log = h("ul", { id: "approvals-log" });
    root.append(status, h("section", { class: "card" }, h("h2", {}, "Pending tool calls"), list), h("section", { class: "card" }, h("h2", {}, "Resolved here"), log));
    const sessions = (await get("/v1/tools/sessions")).data;
    for (const s of sessions) state.approvals.set(s.session_id, s);
    const draw = () => {
      const items = [...state.approvals.values()];
      if (!items.length) return list.replaceChildren(h("p", { class: "muted" }, "Nothing waits for you."));
      list.replaceChildren(
        ...items.map((s) =>
          h(
            "article",
            { class: "card", "data-session": s.session_id },
            h("p", {}, h("code", {}, s.session_id), s.expires_at ? ` · expires ${fmtTime(s.expires_at)}` : ""),
            table(
              [
                { label: "tool", get: (c) => h("code", {}, c.name || `${c.server}__${c.tool}`) },
                { label: "arguments", get: (c) => h("code", {}, JSON.stringify(c.arguments)) },
              ],
              s.pending_calls || []
            ),
            h(
              "p",
              { class: "row" },
              h("button", { type: "button", onclick: () => decide(s, true) }, "Approve"),
              h("button", { type: "button", class: "danger", onclick: () => decide(s, false) }, "Deny")
            )
          )
        )
      );
    };
    async function decide(s, approve) {
      const ids = approve ? (s.pending_calls || []).map((c) => c.id) : [];
      try {
        await api("POST", "/v1/tools/confirm", { session_id: s.session_id, approved_ids: ids });
        state.approvals.delete(s.session_id);
        log.prepend(h("li", {}, `${s.session_id}: ${approve ? "approved" : "denied"}`));
        draw();
      } catch (e) {
        toast(`${s.session_id}: ${e.message}`);
        if (e.status === 404 || e.status === 409 || e.status === 410) {
          state.approvals.delete(s.session_id);
          draw();
        }
      }
    }
    state.approvalListeners.add((p) => {
      if (p.type === "approval.resolved") log.prepend(h("li", {}, `${p.session_id}: resolved`));
      draw();
    });
    draw();
  }

  // -- users and keys --
  function keysTable(keys, canRevoke) {
    return table(
      [
        { label: "key id", get: (k) => h("code", {}, k.id) },
        { label: "user", get: (k) => k.user_id },
        { label: "name", get: (k) => k.name || "" },
        { label: "prefix", get: (k) => h("code", {}, k.prefix || "—") },
        { label: "models", get: (k) => (k.models ? k.models.join(", ") : "all") },
        { label: "rpm", num: true, get: (k) => fmtNum(k.rpm_limit, 0) },
        { label: "state", get: (k) => (k.revoked_at ? `revoked ${fmtTime(k.revoked_at)}` : "active") },
      ].concat(
        canRevoke
          ? [
              {
                label: "",
                get: (k) =>
                  k.revoked_at
                    ? ""
                    : h(
                        "button",
                        {
                          type: "button",
                          class: "danger",
                          "aria-label": `Revoke key ${k.id}`,
                          onclick: async () => {
                            if (!confirm(`Revoke key ${k.id}?`)) return;
                            try {
                              await api("DELETE", `/admin/keys/${encodeURIComponent(k.id)}`);
                              route();
                            } catch (e) {
                              toast(e.message);
                            }
                          },
                        },
                        "Revoke"
                      ),
              },
            ]
          : []
      ),
      keys,
      "No keys."
    );
  }

  const LIMITS = ["rpm_limit", "tpm_limit", "token_quota", "budget_usd"];
  function limitInputs(prefix, values) {
    return LIMITS.map((l) =>
      field(l, h("input", { id: `${prefix}-${l}`, name: l, type: "number", min: "0", step: l === "budget_usd" ? "0.01" : "1", value: values && values[l] !== null && values[l] !== undefined ? values[l] : null }))
    );
  }
  function readLimits(form, allowNull) {
    const out = {};
    for (const l of LIMITS) {
      const v = form.elements[l].value.trim();
      if (v !== "") out[l] = Number(v);
      else if (allowNull) out[l] = null;
    }
    return out;
  }

  async function renderUsers(root) {
    const [users, keys] = await Promise.all([get("/admin/users"), get("/admin/keys")]);
    const admin = isAdmin();
    if (admin) {
      const err = errorBox();
      const uform = h(
        "form",
        { class: "inline", id: "new-user" },
        field("User id", h("input", { name: "user_id", id: "nu-id", placeholder: "generated if empty" })),
        field("Name", h("input", { name: "name", id: "nu-name" })),
        field("Role", h("select", { name: "role", id: "nu-role" }, ["user", "viewer", "operator", "admin"].map((r) => h("option", { value: r }, r)))),
        limitInputs("nu"),
        h("button", { type: "submit" }, "Create user")
      );
      uform.addEventListener("submit", async (e) => {
        e.preventDefault();
        const body = { role: uform.elements.role.value, ...readLimits(uform, false) };
        if (uform.elements.user_id.value.trim()) body.user_id = uform.elements.user_id.value.trim();
        if (uform.elements.name.value.trim()) body.name = uform.elements.name.value.trim();
        try {
          const u = await api("POST", "/admin/users", body);
          toast(`User ${u.user_id} created`);
          route();
        } catch (e2) {
          showErr(err, e2);
        }
      });
      root.append(h("section", { class: "card" }, h("h2", {}, "New user"), uform, err));
    }
    root.append(
      h(
        "section",
        { class: "card" },
        h("h2", {}, "Users"),
        table(
          [
            { label: "user", get: (u) => h("code", {}, u.user_id) },
            { label: "name", get: (u) => u.name || "" },
            { label: "role", get: (u) => u.role },
            { label: "rpm", num: true, get: (u) => fmtNum(u.rpm_limit, 0) },
            { label: "tpm", num: true, get: (u) => fmtNum(u.tpm_limit, 0) },
            { label: "token quota", num: true, get: (u) => fmtNum(u.token_quota, 0) },
            { label: "budget", num: true, get: (u) => fmtUsd(u.budget_usd) },
            { label: "state", get: (u) => (u.disabled ? "disabled" : "active") },
          ].concat(admin ? [{ label: "", get: (u) => userActions(u) }] : []),
          users.data
        )
      )
    );
    root.append(h("section", { class: "card" }, h("h2", {}, "Keys"), keysTable(keys.data, admin)));
  }

  function userActions(u) {
    const box = h("div", {});
    const keyBtn = h("button", { type: "button", "aria-label": `New key for ${u.user_id}`, onclick: () => newKeyForm(u, box) }, "New key");
    const limBtn = h("button", { type: "button", class: "secondary", "aria-label": `Limits of ${u.user_id}`, onclick: () => limitsForm(u, box) }, "Limits");
    const disBtn = u.disabled
      ? null
      : h(
          "button",
          {
            type: "button",
            class: "danger",
            "aria-label": `Disable ${u.user_id}`,
            onclick: async () => {
              if (!confirm(`Disable user ${u.user_id}?`)) return;
              try {
                await api("DELETE", `/admin/users/${encodeURIComponent(u.user_id)}`);
                route();
              } catch (e) {
                toast(e.message);
              }
            },
          },
          "Disable"
        );
    box.append(h("span", { class: "row" }, keyBtn, limBtn, disBtn));
    return box;
  }

  function limitsForm(u, box) {
    const err = errorBox();
    const form = h("form", { class: "inline" }, limitInputs(`lim-${u.user_id}`, u), h("button", { type: "submit" }, "Save limits"));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      try {
        await api("PATCH", `/admin/users/${encodeURIComponent(u.user_id)}`, readLimits(form, true));
        route();
      } catch (e2) {
        showErr(err, e2);
      }
    });
    box.replaceChildren(form, err);
    form.querySelector("input").focus();
  }

  function newKeyForm(u, box) {
    const err = errorBox();
    const form = h(
      "form",
      { class: "inline", id: `new-key-${u.user_id}` },
      field("Key name", h("input", { name: "name" })),
      field("Models (comma separated, empty: all)", h("input", { name: "models" })),
      field("rpm_limit", h("input", { name: "rpm_limit", type: "number", min: "0" })),
      h("button", { type: "submit" }, "Create key")
    );
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const body = { user_id: u.user_id };
      if (form.elements.name.value.trim()) body.name = form.elements.name.value.trim();
      const models = form.elements.models.value.split(",").map((s) => s.trim()).filter(Boolean);
      if (models.length) body.models = models;
      if (form.elements.rpm_limit.value) body.rpm_limit = Number(form.elements.rpm_limit.value);
      try {
        const k = await api("POST", "/admin/keys", body);
        showSecret(k);
      } catch (e2) {
        showErr(err, e2);
      }
    });
    box.replaceChildren(form, err);
    form.querySelector("input").focus();
  }

  // The new key's secret, shown once; closing drops it from the page.
  function showSecret(k) {
    const secret = h("code", { id: "new-key-secret" }, k.key);
    const close = h("button", { type: "button", id: "secret-close" }, "I have copied it — close");
    const copy = h("button", { type: "button", class: "secondary" }, "Copy");
    const panel = h(
      "div",
      { class: "secret card", role: "alertdialog", "aria-labelledby": "secret-title", id: "secret-panel" },
      h("h2", { id: "secret-title" }, `New key ${k.id} for ${k.user_id}`),
      h("p", {}, "This secret is shown once. Copy it now; the gateway keeps only its hash."),
      h("p", {}, secret),
      h("p", { class: "row" }, copy, close)
    );
    copy.addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText(k.key).then(() => toast("Copied"), () => toast("Copy failed")));
    close.addEventListener("click", () => {
      secret.textContent = "";
      panel.remove();
      route();
    });
    $("page").prepend(panel);
    close.focus();
  }

  // -- models and deployments --
  async function renderModels(root) {
    const [deps, breakers] = await Promise.all([get("/admin/models"), get("/admin/breakers").catch(() => ({ data: [] }))]);
    for (const d of deps.data) modelOf.set(d.id, d.model_id);
    const op = canOperate();
    if (op) {
      const err = errorBox();
      const form = h(
        "form",
        { class: "inline", id: "new-model" },
        field("Model id", h("input", { name: "model_id", required: true })),
        field("Vendor", h("select", { name: "vendor_type" }, ["OpenAI", "Anthropic", "Mock", "ComfyUI"].map((v) => h("option", { value: v }, v)))),
        field("Base URL", h("input", { name: "base_url", type: "url" })),
        field("API key", h("input", { name: "api_key", type: "password", autocomplete: "off" })),
        field("Upstream model", h("input", { name: "upstream_model" })),
        field("Weight", h("input", { name: "weight", type: "number", min: "0" })),
        field("Priority", h("input", { name: "priority", type: "number", min: "0" })),
        field("Input $/Mtok", h("input", { name: "price_input_per_mtok", type: "number", min: "0", step: "any" })),
        field("Output $/Mtok", h("input", { name: "price_output_per_mtok", type: "number", min: "0", step: "any" })),
        h("button", { type: "submit" }, "Create deployment")
      );
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        const body = {};
        for (const el of form.elements) {
          if (!el.name || el.value.trim() === "") continue;
          body[el.name] = el.type === "number" ? Number(el.value) : el.value.trim();
        }
        try {
          await api("POST", "/admin/models", body);
          route();
        } catch (e2) {
          showErr(err, e2);
        }
      });
      root.append(h("section", { class: "card" }, h("h2", {}, "New deployment"), form, err));
    }
    const editBox = h("div", {});
    root.append(
      editBox,
      h(
        "section",
        { class: "card", id: "deployments" },
        h("h2", {}, "Deployments"),
        table(
          [
            { label: "model", get: (d) => d.model_id },
            { label: "deployment", get: (d) => h("code", {}, d.id) },
            { label: "vendor", get: (d) => d.vendor_type },
            { label: "upstream", get: (d) => d.upstream_model || d.base_url || "" },
            { label: "weight", num: true, get: (d) => d.weight },
            { label: "priority", num: true, get: (d) => d.priority },
            { label: "in $/Mtok", num: true, get: (d) => fmtNum(d.price_input_per_mtok, 4) },
            { label: "out $/Mtok", num: true, get: (d) => fmtNum(d.price_output_per_mtok, 4) },
            { label: "enabled", get: (d) => (d.enabled ? "yes" : "no") },
          ].concat(
            op
              ? [
                  {
                    label: "",
                    get: (d) =>
                      h(
                        "span",
                        { class: "row" },
                        h("button", { type: "button", class: "secondary", "aria-label": `Edit ${d.id}`, onclick: () => editDeployment(d, editBox) }, "Edit"),
                        h(
                          "button",
                          {
                            type: "button",
                            class: "danger",
                            "aria-label": `Delete ${d.id}`,
                            onclick: async () => {
                              if (!confirm(`Delete deployment ${d.id}?`)) return;
                              try {
                                await api("DELETE", `/admin/models/${encodeURIComponent(d.id)}`);
                                route();
                              } catch (e) {
                                toast(e.message);
                              }
                            },
                          },
                          "Delete"
                        )
                      ),
                  },
                ]
              : []
          ),
          deps.data
        )
      ),
      h("section", { class: "card" }, h("h2", {}, "Circuit breakers"), h("div", { id: "breakers-box" }, breakersTable(breakers.data, op)))
    );
    if (op) {
      const err = errorBox();
      const ids = [...new Set(deps.data.map((d) => d.model_id))];
      const form = h(
        "form",
        { class: "inline" },
        field("Model", h("select", { name: "model" }, ids.map((m) => h("option", { value: m }, m)))),
        field("Fallbacks, in order (comma separated)", h("input", { name: "fallbacks", size: 40 })),
        h("button", { type: "submit" }, "Set fallbacks")
      );
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        const fallbacks = form.elements.fallbacks.value.split(",").map((s) => s.trim()).filter(Boolean);
        try {
          await api("PUT", `/admin/models/${encodeURIComponent(form.elements.model.value)}/fallbacks`, { fallbacks });
          toast("Fallbacks saved");
          err.textContent = "";
        } catch (e2) {
          showErr(err, e2);
        }
      });
      root.append(h("section", { class: "card" }, h("h2", {}, "Fallbacks"), form, err));
    }
    every(POLL_MS, async () => {
      const b = await get("/admin/breakers").catch(() => null);
      const box = $("breakers-box");
      if (b && box) box.replaceChildren(breakersTable(b.data, op));
    });
  }

  function editDeployment(d, box) {
    const err = errorBox();
    const num = (name, v) => field(name, h("input", { name, type: "number", min: "0", step: "any", value: v === null || v === undefined ? null : v }));
    const enabled = h("input", { type: "checkbox", name: "enabled", checked: d.enabled, id: nextId("en") });
    const form = h(
      "form",
      { class: "inline", id: "edit-deployment" },
      num("weight", d.weight),
      num("priority", d.priority),
      num("price_input_per_mtok", d.price_input_per_mtok),
      num("price_output_per_mtok", d.price_output_per_mtok),
      num("max_concurrency", d.max_concurrency),
      field("upstream_model", h("input", { name: "upstream_model", value: d.upstream_model })),
      h("label", { for: enabled.id }, enabled, "enabled"),
      h("button", { type: "submit" }, "Save"),
      h("button", { type: "button", class: "secondary", onclick: () => box.replaceChildren() }, "Cancel")
    );
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const patch = { enabled: enabled.checked };
      for (const el of form.elements) {
        if (!el.name || el.type === "checkbox") continue;
        const v = el.value.trim();
        patch[el.name] = v === "" ? null : el.type === "number" ? Number(v) : v;
      }
      try {
        await api("PATCH", `/admin/models/${encodeURIComponent(d.id)}`, patch);
        route();
      } catch (e2) {
        showErr(err, e2);
      }
    });
    box.replaceChildren(h("section", { class: "card" }, h("h2", {}, `Edit ${d.model_id} · ${d.id}`), form, err));
    form.querySelector("input").focus();
  }

  // -- scripts --
  async function renderScripts(root) {
    const list = await get("/admin/scripts");
    const op = canOperate();
    const name = h("input", { name: "name", required: true, id: "sc-name" });
    const source = h("textarea", { name: "source", rows: 12, id: "sc-source", spellcheck: "false" });
    const err = h("p", { class: "error", role: "alert", id: "sc-error" });
    const save = h("button", { type: "submit", disabled: !op, id: "sc-save" }, "Save (compile)");
    const input = h("textarea", { rows: 4, id: "sc-input", spellcheck: "false" }, '{"messages": []}');
    const fn = h("input", { id: "sc-fn", placeholder: "on_request" });
    const out = h("pre", { class: "answer", id: "sc-output" });
    if (state.scriptDraft) {
      name.value = state.scriptDraft.name;
      source.value = state.scriptDraft.source;
    }
    const form = h("form", { class: "card" }, h("h2", {}, "Edit"), field("Name", name), field("Source (Rhai)", source), h("p", {}, save), err);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      err.textContent = "";
      try {
        const s = await api("PUT", `/admin/scripts/${encodeURIComponent(name.value.trim())}`, { source: source.value });
        toast(`Saved ${s.name}`);
        state.scriptDraft = { name: s.name, source: source.value };
        route();
      } catch (e2) {
        showErr(err, e2);
        // Put the cursor on the compiler's line and column.
        if (e2.detail && e2.detail.line) {
          const lines = source.value.split("\n");
          const at = lines.slice(0, e2.detail.line - 1).reduce((n, l) => n + l.length + 1, 0) + Math.max(0, (e2.detail.column || 1) - 1);
          source.focus();
          source.setSelectionRange(at, Math.min(source.value.length, at + 1));
        }
      }
    });
    const test = h("button", { type: "button", disabled: !op, id: "sc-test" }, "Test");
    test.addEventListener("click", async () => {
      out.textContent = "";
      try {
        const body = { input: JSON.parse(input.value) };
        if (fn.value.trim()) body.function = fn.value.trim();
        const r = await api("POST", `/admin/scripts/${encodeURIComponent(name.value.trim())}/test`, body);
        out.textContent = JSON.stringify(r.output, null, 2);
      } catch (e2) {
        out.textContent = `Error: ${e2.message}`;
      }
    });
    root.append(
      h(
        "section",
        { class: "card" },
        h("h2", {}, "Scripts"),
        table(
          [
            {
              label: "name",
              get: (s) =>
                h(
                  "button",
                  {
                    type: "button",
                    class: "secondary",
                    onclick: async () => {
                      const full = await get(`/admin/scripts/${encodeURIComponent(s.name)}`);
                      state.scriptDraft = null;
                      name.value = full.name;
                      source.value = full.source;
                      source.focus();
                    },
                  },
                  s.name
                ),
            },
            { label: "functions", get: (s) => Object.entries(s.functions || {}).filter(([, has]) => has).map(([f]) => f).join(", ") },
            { label: "error", get: (s) => (s.error ? h("span", { class: "error" }, s.error) : "") },
            { label: "updated", get: (s) => fmtTime(s.updated_at) },
          ],
          list.data,
          "No scripts."
        )
      ),
      form,
      h("section", { class: "card" }, h("h2", {}, "Test the saved script"), field("Input (JSON)", input), field("Function", fn), h("p", {}, test), out)
    );
  }

  // -- routes --
  async function renderRoutes(root) {
    const list = await get("/admin/routes");
    const op = canOperate();
    if (op) {
      const err = errorBox();
      const form = h(
        "form",
        { class: "inline", id: "new-route" },
        field("Prefix", h("input", { name: "prefix", required: true, placeholder: "/openai" })),
        field("Upstream", h("input", { name: "upstream", required: true, type: "url" })),
        field("rpm_limit", h("input", { name: "rpm_limit", type: "number", min: "0" })),
        h("button", { type: "submit" }, "Add route")
      );
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        const body = { prefix: form.elements.prefix.value.trim(), upstream: form.elements.upstream.value.trim() };
        if (form.elements.rpm_limit.value) body.rpm_limit = Number(form.elements.rpm_limit.value);
        try {
          await api("POST", "/admin/routes", body);
          route();
        } catch (e2) {
          showErr(err, e2);
        }
      });
      root.append(h("section", { class: "card" }, h("h2", {}, "New passthrough route"), form, err));
    }
    root.append(
      h(
        "section",
        { class: "card" },
        h("h2", {}, "Routes"),
        table(
          [
            { label: "prefix", get: (r) => h("code", {}, r.prefix) },
            { label: "upstream", get: (r) => r.upstream },
            { label: "source", get: (r) => r.source },
            { label: "injected headers", get: (r) => (r.inject_headers || []).join(", ") },
            { label: "rpm", num: true, get: (r) => fmtNum(r.rpm_limit, 0) },
          ].concat(
            op
              ? [
                  {
                    label: "",
                    get: (r) =>
                      r.source === "admin"
                        ? h(
                            "button",
                            {
                              type: "button",
                              class: "danger",
                              "aria-label": `Delete route ${r.prefix}`,
                              onclick: async () => {
                                if (!confirm(`Delete route ${r.prefix}?`)) return;
                                try {
                                  await api("DELETE", `/admin/routes/${encodeURIComponent(r.id)}`);
                                  route();
                                } catch (e) {
                                  toast(e.message);
                                }
                              },
                            },
                            "Delete"
                          )
                        : "",
                  },
                ]
              : []
          ),
          list.data,
          "No passthrough routes."
        )
      )
    );
  }

  // -- MCP servers --
  async function renderMcp(root) {
    const list = await get("/admin/mcp");
    const op = canOperate();
    if (!list.data.length) root.append(h("p", { class: "muted" }, "No MCP servers registered (POST /admin/mcp/register)."));
    for (const s of list.data) {
      root.append(
        h(
          "section",
          { class: "card", "aria-label": `MCP server ${s.name}` },
          h("h2", {}, s.name, " ", h("span", { class: "badge" }, s.status || "")),
          h("p", { class: "muted" }, `${s.transport} ${s.command || s.url || ""} ${(s.args || []).join(" ")} · pid ${s.pid ?? "—"} · restarts ${s.restarts} · default policy ${s.default_policy} · policy version ${s.policy_version}`, s.error ? ` · last error: ${s.error}` : ""),
          table(
            [
              { label: "tool", get: (t) => h("code", {}, t.name) },
              { label: "description", get: (t) => t.description || "" },
              {
                label: "policy",
                get: (t) => {
                  const sel = h(
                    "select",
                    { "aria-label": `Policy of ${s.name}/${t.name}`, disabled: !op },
                    ["auto", "confirm", "block"].map((p) => h("option", { value: p, selected: p === t.policy }, p))
                  );
                  sel.addEventListener("change", async () => {
                    try {
                      await api("PUT", `/admin/mcp/${encodeURIComponent(s.name)}/tools/${encodeURIComponent(t.name)}/policy`, { policy: sel.value });
                      toast(`${s.name}/${t.name}: ${sel.value}`);
                    } catch (e) {
                      toast(e.message);
                      route();
                    }
                  });
                  return sel;
                },
              },
            ],
            s.tools || [],
            "No tools."
          )
        )
      );
    }
  }

  // -- audit --
  async function renderAudit(root) {
    const list = await get("/admin/audit?limit=200");
    root.append(
      h(
        "section",
        { class: "card" },
        table(
          [
            { label: "time", get: (a) => fmtTime(a.created_at) },
            { label: "actor", get: (a) => a.actor_user_id },
            { label: "action", get: (a) => h("code", {}, a.action) },
            { label: "target", get: (a) => h("code", {}, `${a.target_type}:${a.target_id}`) },
            { label: "details", get: (a) => h("code", {}, JSON.stringify(a.details)) },
          ],
          list.data
        )
      )
    );
  }

  // ---- sign in / out ----
  function buildNav() {
    const nav = $("nav");
    nav.replaceChildren(...PAGES.filter((p) => p.show()).map((p) => h("a", { href: `#/${p.id}`, "data-page": p.id }, p.title)));
    nav.hidden = false;
  }

  async function signIn(key) {
    const me = await whoAmI(key);
    state.key = key;
    state.me = me;
    sessionStorage.setItem(KEY_STORE, key);
    $("signin").hidden = true;
    $("signout").hidden = false;
    $("who").textContent = `${me.user_id} · ${me.role}`;
    buildNav();
    connectBus();
    await route();
    $("main").focus();
  }

  function signOut() {
    sessionStorage.removeItem(KEY_STORE);
    clearPage();
    state.key = null;
    state.me = null;
    clearTimeout(state.wsRetry);
    if (state.ws) state.ws.close();
    state.ws = null;
    state.approvals.clear();
    state.scriptDraft = null;
    $("toast").textContent = "";
    $("page").replaceChildren();
    $("nav").hidden = true;
    $("nav").replaceChildren();
    $("who").textContent = "";
    $("signout").hidden = true;
    $("signin").hidden = false;
    $("signin-key").value = "";
    $("signin-key").focus();
  }

  function init() {
    $("signin-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const err = $("signin-error");
      err.textContent = "";
      const key = $("signin-key").value.trim();
      try {
        await signIn(key);
        $("signin-key").value = "";
      } catch (e2) {
        err.textContent =
          e2.status === 401
            ? `Sign-in failed: this key is not valid (${e2.message}).`
            : `Sign-in failed: ${e2.message}`;
      }
    });
    $("signout").addEventListener("click", signOut);
    window.addEventListener("hashchange", route);
    // Charts draw on canvas: redraw them in the new colours when the system scheme changes.
    window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => state.me && route());
    const saved = sessionStorage.getItem(KEY_STORE);
    if (saved) {
      signIn(saved).catch((e) => {
        sessionStorage.removeItem(KEY_STORE);
        $("signin-error").textContent = `Sign-in failed: ${e.message}`;
      });
    } else {
      $("signin-key").focus();
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
