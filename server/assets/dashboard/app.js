// dreamos-bridge dashboard: signs in with an admin API key, then polls the
// admin metrics snapshot every second and renders it. No dependencies.
// The metrics snapshot is rendered generically (scalars as cards, maps of
// objects as tables) so that new metrics appear without a dashboard change.
"use strict";

const TOKEN_KEY = "dreamos-bridge-token";
const $ = (id) => document.getElementById(id);
let previous = null; // last snapshot, for per-second rates
let previousAt = 0;
let polls = 0;

function token() { return sessionStorage.getItem(TOKEN_KEY); }

async function api(path, options = {}) {
  const headers = Object.assign({ "Content-Type": "application/json" }, options.headers || {});
  if (token()) headers["Authorization"] = "Bearer " + token();
  const resp = await fetch(path, Object.assign({}, options, { headers }));
  const text = await resp.text();
  let body;
  try { body = JSON.parse(text); } catch { body = text; }
  if (!resp.ok) {
    const err = new Error((body && body.message) || resp.statusText);
    err.status = resp.status;
    err.code = body && body.code;
    throw err;
  }
  return body;
}

async function login(apiKey) {
  $("login-error").textContent = "";
  try {
    const t = await api("/v1/auth/token", { method: "POST", body: JSON.stringify({ api_key: apiKey }) });
    sessionStorage.setItem(TOKEN_KEY, t.token);
    show(true);
  } catch (e) {
    $("login-error").textContent = "Sign-in failed: " + (e.code || "") + " " + e.message;
  }
}

function show(signedIn) {
  $("login-panel").hidden = signedIn;
  $("board").hidden = !signedIn;
  $("logout").hidden = !signedIn;
  $("status").textContent = signedIn ? "signed in" : "signed out";
  if (signedIn) poll();
}

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// Flatten nested objects into {"latency.p50": 1.2, ...} (arrays are skipped).
function flatten(obj, prefix = "", out = {}) {
  for (const [k, v] of Object.entries(obj || {})) {
    const key = prefix ? prefix + "." + k : k;
    if (v !== null && typeof v === "object" && !Array.isArray(v)) flatten(v, key, out);
    else if (!Array.isArray(v)) out[key] = v;
  }
  return out;
}

function fmt(v) {
  if (typeof v === "number") return Number.isInteger(v) ? v.toLocaleString() : v.toFixed(3);
  return v === null || v === undefined ? "" : String(v);
}

// Counters that make a useful "per second" column, first match wins.
const RATE_KEYS = ["received", "accepted", "requests", "messages", "total", "sent"];

function rateFor(row, prevRow, dt) {
  if (!prevRow || dt <= 0) return "";
  for (const k of Object.keys(row)) {
    const leaf = k.split(".").pop();
    if (RATE_KEYS.includes(leaf) && typeof row[k] === "number" && typeof prevRow[k] === "number") {
      return ((row[k] - prevRow[k]) / dt).toFixed(1);
    }
  }
  return "";
}

// Share of finished messages (or service requests) that did not succeed.
function errorRate(row) {
  const total = typeof row.accepted === "number" ? row.accepted : row.requests;
  const bad = typeof row.accepted === "number" ? (row.failed || 0) + (row.rejected || 0) : row.failures;
  if (typeof total !== "number" || total === 0 || typeof bad !== "number") return "";
  return (100 * bad / total).toFixed(1);
}

function cell(key, value) {
  const td = el("td");
  if (/(state|status|health|breaker)$/.test(key) && typeof value === "string") {
    td.appendChild(el("span", { class: "pill " + value }, value));
  } else {
    td.textContent = fmt(value);
    if (typeof value === "number") td.className = "num";
  }
  return td;
}

// A map of name -> object becomes a table with one row per name.
function table(name, map, prevMap, dt) {
  const rows = Object.entries(map).map(([k, v]) => [k, flatten(v)]);
  const cols = [];
  for (const [, r] of rows) for (const c of Object.keys(r)) if (!cols.includes(c)) cols.push(c);
  const t = el("table", { "data-section": name });
  const head = el("tr");
  head.appendChild(el("th", {}, name));
  head.appendChild(el("th", {}, "per second"));
  head.appendChild(el("th", {}, "error %"));
  for (const c of cols) head.appendChild(el("th", {}, c));
  t.appendChild(head);
  for (const [k, r] of rows) {
    const tr = el("tr", { "data-name": k });
    tr.appendChild(el("td", {}, k));
    tr.appendChild(el("td", { class: "num rate" }, rateFor(r, prevMap && prevMap[k] ? flatten(prevMap[k]) : null, dt)));
    tr.appendChild(el("td", { class: "num" }, errorRate(r)));
    for (const c of cols) tr.appendChild(cell(c, r[c]));
    t.appendChild(tr);
  }
  return t;
}

function isMapOfObjects(v) {
  return v && typeof v === "object" && !Array.isArray(v) &&
    Object.values(v).length > 0 && Object.values(v).every((x) => x && typeof x === "object" && !Array.isArray(x));
}

function render(snapshot, health) {
  const now = performance.now();
  const dt = previous ? (now - previousAt) / 1000 : 0;
  const cards = $("totals");
  cards.replaceChildren();
  const sections = $("sections");
  sections.replaceChildren();
  const scalars = {};
  for (const [k, v] of Object.entries(snapshot || {})) {
    if (isMapOfObjects(v)) {
      sections.appendChild(el("h2", {}, k));
      sections.appendChild(table(k, v, previous && previous[k], dt));
    } else if (v && typeof v === "object" && !Array.isArray(v)) {
      Object.assign(scalars, flatten(v, k));
    } else if (!Array.isArray(v)) {
      scalars[k] = v;
    }
  }
  const prevFlat = previous ? flatten(previous) : null;
  for (const [k, v] of Object.entries(scalars)) {
    const card = el("div", { class: "card", "data-key": k });
    card.appendChild(el("div", { class: "v" }, fmt(v)));
    let label = k;
    if (prevFlat && typeof v === "number" && typeof prevFlat[k] === "number" && dt > 0 && RATE_KEYS.includes(k.split(".").pop())) {
      label += " (" + ((v - prevFlat[k]) / dt).toFixed(1) + "/s)";
    }
    card.appendChild(el("div", { class: "k" }, label));
    cards.appendChild(card);
  }
  const h = $("health");
  h.replaceChildren();
  h.appendChild(el("span", { class: "pill " + health.status, id: "bridge-health" }, "bridge: " + health.status));
  for (const [name, s] of Object.entries(health.services || {})) {
    h.appendChild(document.createTextNode(" "));
    h.appendChild(el("span", { class: "pill " + s.status }, name + ": " + s.status));
  }
  previous = snapshot;
  previousAt = now;
}

function renderDeadLetters(list) {
  $("dl-count").textContent = String(list.length);
  const box = $("dead-letters");
  box.replaceChildren();
  if (!list.length) { box.appendChild(el("p", { class: "hint" }, "none")); return; }
  const t = el("table");
  const head = el("tr");
  for (const c of ["id", "destination", "error", "attempts", "failed at", ""]) head.appendChild(el("th", {}, c));
  t.appendChild(head);
  for (const d of list) {
    const tr = el("tr", { "data-id": d.id });
    tr.appendChild(el("td", {}, d.id));
    tr.appendChild(el("td", {}, d.message.destination));
    tr.appendChild(el("td", {}, d.error.code + ": " + d.error.message));
    tr.appendChild(el("td", { class: "num" }, String(d.attempts)));
    tr.appendChild(el("td", {}, new Date(d.failed_at).toLocaleTimeString()));
    const b = el("button", { class: "replay" }, "Replay");
    b.onclick = async () => {
      b.disabled = true;
      try { await api("/v1/admin/dead-letters/" + d.id + "/replay", { method: "POST", body: "{}" }); }
      catch (e) { $("board-error").textContent = "Replay failed: " + (e.code || "") + " " + e.message; }
      poll();
    };
    const td = el("td");
    td.appendChild(b);
    tr.appendChild(td);
    t.appendChild(tr);
  }
  box.appendChild(t);
}

let timer = null;
async function poll() {
  clearTimeout(timer);
  if (!token()) return;
  try {
    const [snapshot, health, dl] = await Promise.all([
      api("/v1/admin/metrics.json"), api("/health"), api("/v1/admin/dead-letters"),
    ]);
    render(snapshot, health);
    renderDeadLetters(dl.dead_letters || []);
    polls += 1;
    document.body.setAttribute("data-polls", String(polls));
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    $("board-error").textContent = "";
  } catch (e) {
    if (e.status === 401 || e.status === 403) {
      sessionStorage.removeItem(TOKEN_KEY);
      $("login-error").textContent = "Session ended: " + e.message;
      show(false);
      return;
    }
    $("board-error").textContent = "Polling failed: " + e.message;
  }
  timer = setTimeout(poll, 1000);
}

$("login").addEventListener("submit", (ev) => { ev.preventDefault(); login($("api-key").value); });
$("logout").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); show(false); });
show(Boolean(token()));
