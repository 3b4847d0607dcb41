// The fleet dashboard: polls /dashboard/api/state and redraws. No framework, no build step.
// Every value from the fleet is written with textContent, never as HTML.
"use strict";

const POLL_MS = 2000;
const KEY_STORE = "llm-router-admin-key";
const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = 6; // line colours c0..c5 in style.css

function el(tag, props, children) {
  const node = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
  }
  for (const child of children || []) node.appendChild(child);
  return node;
}

function ago(seconds) {
  if (seconds == null || !isFinite(seconds)) return "never";
  if (seconds < 1) return "just now";
  if (seconds < 90) return Math.round(seconds) + " s ago";
  if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
  return Math.round(seconds / 3600) + " h ago";
}

function clock(ts) {
  return new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
}

function tags(values, excluded, loaded) {
  const warm = new Set(loaded || []);
  return (values || []).map((v) =>
    el("span", {
      class: "tag" + (excluded && v in excluded ? " excluded" : "") + (warm.has(v) ? " loaded" : ""),
      text: v,
      title: warm.has(v) ? "loaded in memory" : "",
    }));
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// What the runtime behind the node says: kind and version, its status, its own load.
function runtimeCell(n) {
  const status = n.runtime_status || "ready";
  const load = n.runtime_load || {};
  const figures = [
    load.running != null ? `${load.running} running` : null,
    load.waiting != null ? `${load.waiting} waiting` : null,
    load.kv_cache_usage != null ? `kv ${Math.round(100 * load.kv_cache_usage)}%` : null,
  ].filter(Boolean).join(" · ");
  return el("td", { "data-runtime-status": status }, [
    el("span", { class: "pill rt-" + status, text: status }),
    el("div", { class: "mono sub", text: [n.runtime_kind, n.runtime_version].filter(Boolean).join(" ") }),
    el("div", { class: "sub", text: figures }),
  ]);
}

function nodeRow(n, now, history) {
  const cap = Math.max(1, n.max_concurrency || 1);
  const used = n.in_flight || 0;
  const pct = Math.min(100, Math.round((100 * used) / cap));
  const bar = el("span", { class: "bar" + (used >= cap ? " full" : "") }, [el("i")]);
  bar.firstChild.style.width = pct + "%";
  return el("tr", {
    class: n.status,
    "data-node-id": n.id,
    "data-machine": n.machine_name,
    "data-status": n.status,
  }, [
    el("td", {}, [
      el("div", { text: n.machine_name }),
      el("div", { class: "mono sub", text: `${n.ip_address}:${n.node_api_port} · ${n.id.slice(0, 8)}` }),
    ]),
    el("td", {}, [el("span", { class: "pill be", text: n.gpu_backend })]),
    el("td", {}, [el("span", { class: "pill st-" + n.status, text: n.status })]),
    runtimeCell(n),
    el("td", {}, [bar, el("span", { text: pct + "%" })]),
    el("td", { class: "mono", text: `${used} / ${cap}` + (n.max_concurrency_source ? ` (${n.max_concurrency_source})` : "") }),
    el("td", {}, [sparkline({ "data-node-load": n.id },
      history.node_load_pct[n.id] || history.starts.map(() => 0), 100)]),
    el("td", { text: ago(n.last_seen ? now - n.last_seen : null) }),
    el("td", {}, tags(n.executable_models, n.excluded_models, n.loaded_models)),
  ]);
}

function modelRow(m, history) {
  const h = history.models[m.id];
  return el("tr", { "data-model": m.id }, [
    el("td", { class: "mono", text: m.id }),
    el("td", { text: String(m.online_nodes) }),
    el("td", {}, m.backends.map((b) => el("span", { class: "pill be", text: b }))),
    el("td", { text: String(m.queue_depth) }),
    el("td", {}, [sparkline({ "data-model-rps": m.id },
      h ? h.requests_per_s : history.starts.map(() => 0), 0.1)]),
    el("td", {}, m.nodes.map((n) =>
      el("span", { class: "tag" + (n.status === "online" ? "" : " excluded"), text: n.machine_name }))),
  ]);
}

function seconds(s) {
  if (s == null) return "–";
  return s < 10 ? s.toFixed(1) + " s" : s < 5400 ? Math.round(s) + " s" : Math.round(s / 60) + " min";
}

// The rest of a bounded list comes as one row: tenant "other", `folded` rows summed.
function tenantCell(row) {
  const folded = row.folded != null;
  return el("td", { class: folded ? "folded" : "mono", text: folded ? `${row.folded} more` : row.tenant });
}

function queueTenantRows(models) {
  return models.flatMap((m) => (m.queue_tenants || []).map((t) =>
    el("tr", {
      "data-queue-model": m.id,
      "data-tenant": t.folded != null ? "" : t.tenant,
      "data-band": t.band == null ? "" : String(t.band),
      "data-waiting": String(t.waiting),
    }, [
      el("td", { class: "mono", text: m.id }),
      el("td", { text: t.band == null ? "–" : String(t.band) }),
      tenantCell(t),
      el("td", { text: String(t.waiting) }),
      el("td", { text: seconds(t.oldest_wait_s) }),
    ])));
}

function flightRow(t) {
  const limit = Math.max(1, t.limit || 1);
  const pct = Math.min(100, Math.round((100 * t.used) / limit));
  const bar = el("span", { class: "bar" + (t.used >= limit ? " full" : "") }, [el("i")]);
  bar.firstChild.style.width = pct + "%";
  return el("tr", {
    "data-flight-tenant": t.folded != null ? "" : t.tenant,
    "data-used": String(t.used),
    "data-limit": String(t.limit),
  }, [
    tenantCell(t),
    el("td", {}, [bar, el("span", { class: "mono", text: `${t.used} / ${t.limit}` })]),
    el("td", { text: String(t.keys) }),
  ]);
}

function decisionRow(d, names) {
  const ok = d.outcome === "routed" || d.outcome === "queued";
  const cls = ok ? "o-" + d.outcome : d.outcome === "failover" ? "o-failover" : "o-err";
  return el("tr", {}, [
    el("td", { class: "mono", text: clock(d.ts) }),
    el("td", { class: "mono", text: d.replica || "" }),
    el("td", { class: "mono", text: d.model }),
    el("td", { text: d.node ? names[d.node] || d.node.slice(0, 8) : "–" }),
    el("td", { class: cls, text: d.outcome }),
    el("td", { class: "mono", text: String(d.status) }),
    el("td", { text: String(d.attempts) }),
    el("td", { class: "mono", text: String(d.queue_wait_ms) }),
    el("td", { class: "mono", text: String(d.duration_ms) }),
    el("td", { class: "mono", text: d.request_id }),
  ]);
}

// --- charts: inline SVG, one path per series, gaps where a bucket saw nothing -------------

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function pathOf(values, max, w, h) {
  const step = values.length > 1 ? w / (values.length - 1) : w;
  let d = "";
  let pen = false;
  values.forEach((v, i) => {
    if (v == null) { pen = false; return; }
    const x = (i * step).toFixed(1);
    const y = (h - 1 - (Math.min(v, max) / max) * (h - 2)).toFixed(1);
    d += (pen ? "L" : "M") + x + " " + y;
    pen = true;
  });
  return d;
}

// Draws `lines` ([{values, cls}]) into `svg`; the y axis starts at 0 and ends at the
// largest value (or `floor`, whichever is higher). The values are kept on the element.
function draw(svg, lines, floor) {
  const w = 300;
  const h = Number(svg.getAttribute("height")) || 60;
  const seen = lines.flatMap((l) => l.values).filter((v) => v != null);
  const max = Math.max(floor || 0, ...seen) || 1;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("data-values", JSON.stringify(lines.map((l) => l.values)));
  svg.setAttribute("data-max", String(max));
  const children = [svgEl("line", { x1: 0, x2: w, y1: h - 0.5, y2: h - 0.5, class: "axis" })];
  for (const line of lines) {
    const d = pathOf(line.values, max, w, h);
    if (d) children.push(svgEl("path", { d, class: "ln " + line.cls, "vector-effect": "non-scaling-stroke" }));
  }
  svg.replaceChildren(...children);
  return max;
}

function last(values) {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] != null) return values[i];
  return null;
}

function num(v, unit) {
  if (v == null) return "–";
  const text = v >= 100 ? Math.round(v).toString() : v >= 10 ? v.toFixed(1) : v.toFixed(2);
  return text + (unit || "");
}

function legend(id, items) {
  $(id).replaceChildren(...items.map(([cls, label, value]) =>
    el("span", { class: "key " + cls }, [el("i"), el("span", { text: `${label} ${value}` })])));
}

// One chart of the "fleet over time" row: its lines, the top of its y axis, its legend.
function plot(id, lines, floor, unit) {
  const max = draw($("ch-" + id), lines, floor);
  $("mx-" + id).textContent = num(max, unit);
  legend("lg-" + id, lines.map((l) => [l.cls, l.name, num(last(l.values), unit)]));
}

function renderCharts(h) {
  const pct = (vs) => vs.map((v) => (v == null ? null : 100 * v));
  plot("rps", [{ values: h.requests_per_s, cls: "c0", name: "last" }], 1, "");
  plot("err", [{ values: pct(h.error_rate), cls: "bad", name: "last" }], 5, " %");
  for (const [id, s] of [["lat", h.latency_ms], ["ttft", h.ttft_ms]]) {
    plot(id, [{ values: s.p50, cls: "c0", name: "p50" }, { values: s.p99, cls: "c1", name: "p99" }], 1, " ms");
  }
  // Only models that queued in the window get a line, the longest queues first.
  const peak = (m) => Math.max(0, ...h.models[m].queue_depth);
  const queued = Object.keys(h.models).filter((m) => peak(m) > 0).sort((a, b) => peak(b) - peak(a));
  const lines = queued.slice(0, PALETTE).map((m, i) =>
    ({ values: h.models[m].queue_depth, cls: "c" + i, name: m }));
  plot("queue", lines.length ? lines : [{ values: h.starts.map(() => 0), cls: "c0", name: "none" }], 1, "");
  $("span").textContent = `${Math.round((h.starts.length * h.bucket_s) / 60)} min, ${h.bucket_s} s buckets`;
}

function sparkline(attrs, values, floor) {
  const svg = svgEl("svg", { class: "spark", height: 20, ...attrs });
  draw(svg, [{ values, cls: "c0" }], floor);
  return svg;
}

function render(state) {
  const now = state.generated_at;
  const names = {};
  for (const n of state.nodes) names[n.id] = n.machine_name;
  const online = state.nodes.filter((n) => n.status === "online");
  $("replica").textContent = state.replica;
  $("store").textContent = state.store;
  $("updated").textContent = clock(now);
  $("c-online").textContent = `${online.length} / ${state.nodes.length}`;
  $("c-models").textContent = String(state.models.filter((m) => m.online_nodes > 0).length);
  const inflight = state.nodes.reduce((s, n) => s + (n.in_flight || 0), 0);
  const capacity = online.reduce((s, n) => s + (n.max_concurrency || 0), 0);
  $("c-inflight").textContent = `${inflight} / ${capacity}`;
  $("c-queued").textContent = String(state.models.reduce((s, m) => s + m.queue_depth, 0));
  fill(document.querySelector("#nodes tbody"), state.nodes.map((n) => nodeRow(n, now, state.history)));
  $("nodes-empty").hidden = state.nodes.length > 0;
  fill(document.querySelector("#models tbody"), state.models.map((m) => modelRow(m, state.history)));
  const waiting = queueTenantRows(state.models);
  fill(document.querySelector("#queue-tenants tbody"), waiting);
  $("queue-tenants-empty").hidden = waiting.length > 0;
  const flight = (state.tenants_in_flight || []).map(flightRow);
  fill(document.querySelector("#tenant-flight tbody"), flight);
  $("tenant-flight-empty").hidden = flight.length > 0;
  renderCharts(state.history);
  fill(document.querySelector("#decisions tbody"), state.decisions.map((d) => decisionRow(d, names)));
}

function setConn(text, cls) {
  const c = $("conn");
  c.textContent = text;
  c.className = "pill " + cls;
}

async function poll() {
  const headers = {};
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers["Authorization"] = "Bearer " + key;
  try {
    const resp = await fetch("/dashboard/api/state", { headers, cache: "no-store" });
    if (resp.status === 401 || resp.status === 403) {
      $("login").hidden = false;
      $("main").hidden = true;
      if (key) $("login-error").textContent = "That key was not accepted.";
      setConn("locked", "pill-wait");
      return;
    }
    const body = await resp.json();
    if (!resp.ok) {
      setConn(body.error ? body.error.code : "error " + resp.status, "pill-bad");
      return;
    }
    $("login").hidden = true;
    $("main").hidden = false;
    render(body);
    setConn("live", "pill-ok");
  } catch (err) {
    setConn("unreachable", "pill-bad");
  }
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY_STORE, $("key").value.trim());
  $("login-error").textContent = "";
  poll();
});

poll();
setInterval(poll, POLL_MS);
