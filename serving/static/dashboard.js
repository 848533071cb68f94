// The Relevo console: polls /v1/dashboard with a read key and draws every panel from it.
// Plain DOM and SVG, no library: the page must work offline and under a strict CSP.
"use strict";

const REFRESH_MS = 5000;
const KEY = "relevo-read-key";
const COLORS = ["#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2", "#65a30d", "#dc2626"];
const SVG = "http://www.w3.org/2000/svg";
let regionShown = null;

const $ = (selector, root = document) => root.querySelector(selector);
const fmt = (n, digits = 0) => n === null || n === undefined || Number.isNaN(n) ? "–"
  : Number(n).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
const pct = (n) => n === null || n === undefined ? "–" : `${fmt(n * 100, 1)}%`;
const when = (ms) => new Date(ms).toISOString().replace("T", " ").slice(0, 19);

function el(tag, attrs = {}, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

function fill(tbody, rows, empty = "nothing yet") {
  tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 9, class: "empty" }, empty))]));
}

function row(cells, attrs = {}) {
  return el("tr", attrs, ...cells.map((c) => c instanceof Node ? el("td", {}, c)
    : el("td", typeof c === "number" ? { class: "num" } : {}, c)));
}

// A line chart of named series of [x, y] points; x is epoch ms unless `xLabel` formats it otherwise.
function lineChart(container, series, { xLabel = (x) => when(x).slice(11), height = 170 } = {}) {
  const width = Math.max(320, Math.round(container.clientWidth) || 640);  // drawn at its size: text stays 11 px
  const points = series.flatMap((s) => s.points).filter(([, y]) => y !== null && Number.isFinite(y));
  container.replaceChildren();
  if (!points.length) { container.append(el("p", { class: "empty" }, "no samples yet")); return; }
  const [x0, x1] = [Math.min(...points.map((p) => p[0])), Math.max(...points.map((p) => p[0]))];
  const [y0, y1] = [Math.min(0, ...points.map((p) => p[1])), Math.max(...points.map((p) => p[1])) || 1];
  const pad = { l: 52, r: 8, t: 8, b: 20 };
  const sx = (x) => pad.l + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (width - pad.l - pad.r);
  const sy = (y) => height - pad.b - ((y - y0) / (y1 - y0 || 1)) * (height - pad.t - pad.b);
  const svg = el("svg:svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
  for (const y of [y0, (y0 + y1) / 2, y1]) {
    svg.append(el("svg:line", { x1: pad.l, x2: width - pad.r, y1: sy(y), y2: sy(y), stroke: "#e3e6ea" }),
      el("svg:text", { x: pad.l - 4, y: sy(y) + 4, "text-anchor": "end", "font-size": 11, fill: "#667085" },
        fmt(y, y1 < 10 ? 2 : 0)));
  }
  svg.append(el("svg:text", { x: pad.l, y: height - 4, "font-size": 11, fill: "#667085" }, xLabel(x0)),
    el("svg:text", { x: width - pad.r, y: height - 4, "font-size": 11, fill: "#667085", "text-anchor": "end" },
      xLabel(x1)));
  const legend = el("div", { class: "legend" });
  series.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    const shown = s.points.filter(([, y]) => y !== null && Number.isFinite(y));
    if (!shown.length) return;
    const d = shown.map(([x, y], j) => `${j ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join("");
    svg.append(el("svg:path", { d, fill: "none", stroke: color, "stroke-width": 2,
      "stroke-dasharray": s.dashed ? "5 4" : "none" }));
    if (shown.length === 1) svg.append(el("svg:circle", { cx: sx(shown[0][0]), cy: sy(shown[0][1]), r: 3, fill: color }));
    const swatch = el("i");
    swatch.style.background = color;  // CSSOM, which the page's CSP allows (a style attribute it would not)
    legend.append(el("span", {}, swatch, s.name));
  });
  container.append(svg, legend);
}

function bySeries(samples, pick) {
  const names = [...new Set(samples.flatMap((s) => Object.keys(pick(s) || {})))].sort();
  return names.map((name) => ({ name, points: samples.map((s) => [s.t, (pick(s) || {})[name] ?? null]) }));
}

function ingest(d) {
  const panel = $("#panel-ingest");
  const last = d.series.at(-1) || { rates: {} };
  const events = Object.values(d.topics).reduce((a, t) => a + t.events, 0);
  $(".summary", panel).textContent = `${fmt(events)} events ingested, ${fmt(d.applied)} applied to features, ` +
    `${fmt(d.duplicates)} duplicates skipped; stream clock ${d.stream_clock ? when(d.stream_clock) : "–"}`;
  lineChart($(".chart", panel), bySeries(d.series, (s) => s.rates));
  fill($("tbody", panel), Object.entries(d.topics).map(([topic, t]) =>
    row([topic, fmt(t.events), fmt(t.records), fmt(last.rates[topic] ?? 0, 1), fmt(t.lag)], { "data-topic": topic })));
}

function lag(d) {
  const panel = $("#panel-lag");
  const total = Object.values(d.topics).reduce((a, t) => a + t.lag, 0);
  $(".summary", panel).textContent = `${fmt(total)} records waiting for the worker group`;
  lineChart($(".chart", panel), bySeries(d.series, (s) => s.lag));
}

function freshness(d) {
  const panel = $("#panel-freshness");
  $(".summary", panel).textContent = `record produced → features written: p50 ${fmt(d.freshness_p50_ms, 1)} ms, ` +
    `p99 ${fmt(d.freshness_p99_ms, 1)} ms (latest samples)`;
  lineChart($(".chart", panel), [
    { name: "p50", points: d.series.map((s) => [s.t, s.freshness_p50_ms]) },
    { name: "p99", points: d.series.map((s) => [s.t, s.freshness_p99_ms]) }]);
}

function processors(d) {
  fill($("#panel-processors tbody"), Object.entries(d.processors).map(([name, p]) =>
    row([name, fmt(p.batches), fmt(p.seconds, 2), fmt(p.mean_ms, 2)], { "data-processor": name })));
}

const ROUTES_FIRST = ["/v1/search", "/v1/suggest", "/v1/rank"];
function latency(d) {
  const panel = $("#panel-latency");
  const routes = Object.keys(d.latency).sort((a, b) =>
    ((ROUTES_FIRST.indexOf(a) + 1 || 99) - (ROUTES_FIRST.indexOf(b) + 1 || 99)) || a.localeCompare(b));
  const watched = routes.filter((r) => ROUTES_FIRST.includes(r));
  lineChart($(".chart", panel), watched.map((route) => ({
    name: route, points: d.series.map((s) => [s.t, s.latency[route]?.p99_ms ?? null]) })));
  fill($("tbody", panel), routes.map((route) => {
    const l = d.latency[route];
    return row([route, fmt(l.per_s), fmt(l.p50_ms, 2), fmt(l.p99_ms, 2)], { "data-route": route });
  }), "no requests yet");
}

function deadLetters(d) {
  const panel = $("#panel-dlq");
  const letters = d.dead_letters;
  $(".summary", panel).textContent = `${fmt(letters.total)} dead letters in ${letters.groups.length} reasons`;
  fill($("tbody", panel), letters.groups.map((g) => row([g.reason, fmt(g.count),
    Object.entries(g.sources).map(([s, n]) => `${s} ${fmt(n)}`).join(", "),
    el("div", {}, ...g.samples.map((s) => el("code", {}, s)))], { "data-reason": g.reason })), "no dead letters");
}

const level = (v) => typeof v === "number" ? fmt(v, 3)
  : typeof v === "object" && v ? Object.entries(v).sort((a, b) => b[1] - a[1]).slice(0, 2)
    .map(([k, n]) => `${k} ${fmt(n, 2)}`).join(", ") : String(v);

function timeline(container, alerts) {
  container.replaceChildren();
  if (!alerts.length) { container.append(el("p", { class: "empty" }, "no drift alerts")); return; }
  const lanes = [...new Set(alerts.map((a) => `${a.region} · ${a.metric}`))].sort();
  const t0 = Math.min(...alerts.map((a) => a.first_seen));
  const t1 = Math.max(...alerts.map((a) => a.resolved_at || a.last_seen), t0 + 1);
  const width = Math.max(480, Math.round(container.clientWidth) || 900), lane = 20;
  const pad = { l: 170, r: 10, t: 6, b: 22 };
  const height = pad.t + lanes.length * lane + pad.b;
  const sx = (t) => pad.l + (t - t0) / (t1 - t0) * (width - pad.l - pad.r);
  const svg = el("svg:svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
  lanes.forEach((name, i) => svg.append(el("svg:text", { x: pad.l - 6, y: pad.t + i * lane + 14, "font-size": 11,
    "text-anchor": "end", fill: "#1d2330" }, name)));
  for (const a of alerts) {
    const i = lanes.indexOf(`${a.region} · ${a.metric}`);
    const x = sx(a.first_seen), end = sx(a.resolved_at || a.last_seen);
    const color = a.severity === "critical" ? "#c0362c" : "#c27c0e";
    svg.append(el("svg:rect", { x, y: pad.t + i * lane + 4, width: Math.max(4, end - x), height: lane - 8, rx: 2,
      fill: color, "fill-opacity": a.resolved ? 0.45 : 0.9 },
    el("svg:title", {}, `${a.region} ${a.metric} ${a.severity}: ${when(a.first_seen)} → ${when(a.last_seen)}`)));
  }
  svg.append(el("svg:text", { x: pad.l, y: height - 6, "font-size": 11, fill: "#667085" }, when(t0)),
    el("svg:text", { x: width - pad.r, y: height - 6, "font-size": 11, fill: "#667085", "text-anchor": "end" },
      `${when(t1)} (event time)`));
  container.append(svg);
}

function alerts(d) {
  const panel = $("#panel-alerts");
  const open = d.alerts.filter((a) => !a.resolved);
  const regions = new Set(d.alerts.map((a) => a.region));
  $(".summary", panel).textContent = `${fmt(d.alerts.length)} alerts in ${regions.size} regions, ` +
    `${fmt(open.length)} open`;
  timeline($(".timeline", panel), d.alerts);
  fill($("tbody", panel), d.alerts.slice(0, 30).map((a) => row([a.region, a.metric,
    el("span", { class: a.severity }, a.severity), `${level(a.baseline)} → ${level(a.current)}`, when(a.first_seen),
    el("span", { class: a.resolved ? "resolved" : a.severity }, a.resolved ? "resolved" : "open")],
  { "data-region": a.region, "data-metric": a.metric })), "no drift alerts");
}

function models(d) {
  const panel = $("#panel-models");
  const m = d.models;
  const lastWindow = m.live_mrr.at(-1);
  $(".summary", panel).textContent = m.published
    ? `${fmt(m.published)} versions published, v${m.serving ?? "–"} serving; latest window: model ` +
      `${fmt(lastWindow?.model_mrr, 3)} vs session rule ${fmt(lastWindow?.rule_mrr, 3)}`
    : "no version published yet (the trainer needs labelled examples)";
  lineChart($(".chart", panel), [
    { name: "model (live MRR)", points: m.live_mrr.map((w) => [w.last, w.model_mrr]) },
    { name: "session rule", points: m.live_mrr.map((w) => [w.last, w.rule_mrr]), dashed: true, color: "#667085" }],
  { xLabel: (v) => `v${v}` });
  fill($("tbody", panel), m.live_mrr.map((w) => row([`v${w.first}–v${w.last}`, fmt(w.clickouts),
    fmt(w.model_mrr, 3), fmt(w.rule_mrr, 3), `${w.lift >= 0 ? "+" : ""}${fmt(w.lift, 3)}`],
  { "data-window": `${w.first}-${w.last}` })), "no live MRR yet");
}

function queryRows(list, cells) {
  return list.map((q) => row([q.query, ...cells(q)], { "data-query": q.query }));
}

function search(d) {
  const panel = $("#panel-search");
  const select = $("#region-select");
  const regions = Object.keys(d.search).sort((a, b) => d.search[b].totals.searches - d.search[a].totals.searches);
  if (!regions.includes(regionShown)) regionShown = regions[0] ?? null;
  select.replaceChildren(...regions.map((r) => el("option", { value: r }, r)));
  if (regionShown) select.value = regionShown;
  const r = d.search[regionShown];
  $(".summary span", panel).textContent = r ? `${fmt(r.totals.searches, 1)} searches (decayed, half-life ` +
    `${fmt(r.half_life_s / 86400, 1)} d), CTR ${pct(r.totals.ctr)}, no result ${fmt(r.totals.no_result, 1)}, ` +
    `as of ${when(r.as_of)}` : "no searches yet";
  const lists = { top: (q) => [fmt(q.searches, 1), pct(q.ctr)], no_result: (q) => [fmt(q.searches, 1),
    fmt(q.no_result, 1)], no_click: (q) => [fmt(q.searches, 1), fmt(q.no_click, 1), pct(q.ctr)] };
  for (const [name, cells] of Object.entries(lists)) {
    fill($(`table[data-list="${name}"] tbody`, panel), r ? queryRows(r[name], cells) : [], "none");
  }
}

const PANELS = [ingest, lag, freshness, processors, latency, deadLetters, alerts, models, search];
let last = null;

function render(d) {
  for (const panel of PANELS) {
    try { panel(d); } catch (err) { console.error(panel.name, err); }
  }
}

function status(text, state) {
  const node = $("#status");
  node.textContent = text;
  node.dataset.state = state;
}

function askForKey(message = "") {
  $("#key-form").hidden = false;
  $("#key-error").textContent = message;
}

async function refresh() {
  const key = sessionStorage.getItem(KEY);
  if (!key) { askForKey(); return; }
  try {
    const answer = await fetch("/v1/dashboard?minutes=15", { headers: { "X-API-Key": key } });
    if (answer.status === 401 || answer.status === 403) {
      sessionStorage.removeItem(KEY);
      askForKey((await answer.json()).detail);
      return;
    }
    if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
    last = await answer.json();
    $("#key-form").hidden = true;
    $("#panels").hidden = false;
    render(last);
    status(`updated ${new Date().toLocaleTimeString("en-GB")}`, "ok");
  } catch (err) {
    status(`refresh failed: ${err.message}; retrying`, "error");
  }
  setTimeout(refresh, REFRESH_MS);
}

function start() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("key")) {  // a key in the fragment never reaches a server log; keep it for this tab only
    sessionStorage.setItem(KEY, fragment.get("key"));
    history.replaceState(null, "", location.pathname);
  }
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("#key-input").value);
    refresh();
  });
  $("#region-select").addEventListener("change", (event) => {
    regionShown = event.target.value;
    if (last) search(last);
  });
  refresh();
}

document.addEventListener("DOMContentLoaded", start);
