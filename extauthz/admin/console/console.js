// extauthz console: plain JavaScript over the management API (/v1/), no build step and
// nothing from other hosts. The pasted token lives in sessionStorage and travels as an
// Authorization header; there are no cookies, so there is nothing for CSRF to ride on.
// Every value from the API reaches the page through textContent, never as HTML.
"use strict";

const KEY = "extauthz.token";
const $ = (id) => document.getElementById(id);
const state = { cursor: null, tokens: [], usageId: null, routes: {} };

// --- the API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit",
    cache: "no-store",
  });
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    if (response.status === 401 && sessionStorage.getItem(KEY)) {
      signOut("Your token was refused (expired or revoked?). Sign in again.");
    }
    throw new ApiError(response.status, data);
  }
  return data;
}

// --- small helpers ---------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

const splitList = (text) => text.split(/[\s,]+/).filter(Boolean);
const utc = (seconds) => new Date(seconds * 1000).toISOString().slice(0, 16).replace("T", " ");

function ago(seconds) {
  const delta = Date.now() / 1000 - seconds;
  if (delta < 60) return "just now";
  if (delta < 3600) return `${Math.floor(delta / 60)} min ago`;
  if (delta < 86400) return `${Math.floor(delta / 3600)} h ago`;
  return `${Math.floor(delta / 86400)} d ago`;
}

function until(seconds) {
  const delta = seconds - Date.now() / 1000;
  if (delta <= 0) return "expired";
  if (delta < 3600) return `in ${Math.ceil(delta / 60)} min`;
  if (delta < 86400 * 2) return `in ${Math.round(delta / 3600)} h`;
  return `in ${Math.round(delta / 86400)} d`;
}

function tags(values, strong) {
  const cell = el("td");
  for (const value of values) {
    cell.append(el("span", { class: strong.has(value) ? "tag strong" : "tag", text: value }));
  }
  return cell;
}

function openDialog(id) {
  const dialog = $(id);
  for (const error of dialog.querySelectorAll(".error")) error.textContent = "";
  dialog.showModal();
}

// --- signing in and out ------------------------------------------------------------------

async function signIn(token) {
  sessionStorage.setItem(KEY, token);
  try {
    await api("GET", "/v1/tokens?limit=1");
  } catch (e) {
    sessionStorage.removeItem(KEY);
    const why = e.status === 401 ? "This token is not valid." : e.message;
    $("login-error").textContent = why;
    return;
  }
  showApp();
}

function showApp() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("session").hidden = false;
  $("session-label").textContent = "Signed in";
  $("login-token").value = "";
  $("main").focus();
  loadTokens(true);
  loadAudit();
}

function signOut(message = "") {
  sessionStorage.removeItem(KEY);
  for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
  $("app").hidden = true;
  $("session").hidden = true;
  $("usage").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("tokens-body").replaceChildren();
  $("audit-body").replaceChildren();
  $("notice").textContent = "";
  $("login-token").focus();
}

// --- tokens --------------------------------------------------------------------------------

async function loadTokens(fresh) {
  if (fresh) {
    state.cursor = null;
    state.tokens = [];
  }
  const params = new URLSearchParams({ limit: "100" });
  const route = $("filter-route").value.trim();
  if (route) params.set("route", route);
  if (state.cursor !== null) params.set("cursor", String(state.cursor));
  $("tokens-status").textContent = "Loading…";
  try {
    const page = await api("GET", `/v1/tokens?${params}`);
    state.tokens.push(...page.tokens);
    state.cursor = page.next_cursor;
  } catch (e) {
    $("tokens-status").textContent = e.message;
    return;
  }
  renderTokens();
}

function renderTokens() {
  const needle = $("filter-text").value.trim().toLowerCase();
  const shown = state.tokens.filter((t) =>
    !needle ||
    [t.id, t.name, ...t.routes, ...t.scopes].some((v) => v.toLowerCase().includes(needle)),
  );
  const rows = shown.map(tokenRow);
  if (rows.length === 0) {
    rows.push(el("tr", {}, el("td", { colspan: "7", class: "empty", text: "No tokens here." })));
  }
  $("tokens-body").replaceChildren(...rows);
  const more = state.cursor !== null;
  $("more").hidden = !more;
  const count = `${shown.length} token${shown.length === 1 ? "" : "s"}`;
  $("tokens-status").textContent = more ? `${count} shown; more to load.` : `${count}.`;
}

function tokenRow(t) {
  const expires = t.expires_at === null ? el("td", { text: "never" })
    : el("td", { title: `${utc(t.expires_at)} UTC`, text: until(t.expires_at) });
  if (t.expires_at !== null && t.expires_at <= Date.now() / 1000) expires.className = "expired";
  const used = t.last_used === null ? el("td", { class: "muted", text: "never" })
    : el("td", { title: `${utc(t.last_used)} UTC`, text: ago(t.last_used) });
  const row = el(
    "tr",
    { "data-id": t.id },
    el("td", { text: t.name || "—" }),
    el("td", { class: "id", text: t.id }),
    tags(t.routes, new Set(["*"])),
    tags(
      [...t.scopes, ...(t.models || []).map((m) => `model:${m}`)],
      new Set(["admin", "tokens:manage"]),
    ),
    expires,
    used,
    el(
      "td",
      { class: "actions" },
      el("button", {
        type: "button", class: "small", text: "Usage", "aria-label": `Usage of ${t.id}`,
        onclick: () => showUsage(t.id),
      }),
      el("button", {
        type: "button", class: "small", text: "Rotate", "aria-label": `Rotate ${t.id}`,
        onclick: () => startRotate(t.id),
      }),
      el("button", {
        type: "button", class: "small", text: "Revoke", "aria-label": `Revoke ${t.id}`,
        onclick: () => startRevoke(t.id),
      }),
    ),
  );
  if (t.id === state.usageId) row.classList.add("selected");
  return row;
}

// --- what the chosen routes need --------------------------------------------------------

// The published routes (GET /v1/policy), loaded when the create dialog opens: the dialog
// says what scopes each chosen route needs (a token needs one of them) and offers to add them.
async function openCreate() {
  openDialog("create-dialog");
  try {
    state.routes = (await api("GET", "/v1/policy")).routes || {};
  } catch {
    state.routes = {};
  }
  $("route-names").replaceChildren(
    ...Object.keys(state.routes).map((name) => el("option", { value: name })),
  );
  showNeeds();
}

function showNeeds() {
  const routes = state.routes || {};
  const chosen = splitList($("create-routes").value);
  const names = chosen.includes("*") ? Object.keys(routes) : chosen;
  const have = new Set(splitList($("create-scopes").value));
  const lines = [];
  for (const name of names) {
    const route = routes[name];
    if (!route) {
      lines.push(el("p", { class: "warn", text: `${name}: not a published route` }));
      continue;
    }
    const scopes = route.scopes || [];
    const line = el("p", {}, el("strong", { text: name }), ": ");
    if (route.api) lines.push(modelLine(name, route.models || []));
    if (route.access === "public") line.append("public, no token needed");
    else if (!scopes.length) line.append("any scope");
    else {
      line.append(scopes.some((s) => have.has(s)) ? "needs one of " : "needs one of (missing) ");
      for (const scope of scopes) {
        line.append(el("button", {
          type: "button", class: "small", text: have.has(scope) ? `${scope} ✓` : `+ ${scope}`,
          "aria-label": `Add scope ${scope}`, "data-scope": scope,
          onclick: () => addScope(scope),
        }), " ");
      }
    }
    lines.push(line);
  }
  $("create-needs").replaceChildren(...lines);
}

function modelLine(name, models) {
  const chosen = new Set(splitList($("create-models").value));
  const line = el("p", {}, el("strong", { text: name }), ": LLM models ");
  if (!models.length) line.append("(any model the server has)");
  for (const model of models) {
    line.append(el("button", {
      type: "button", class: "small", text: chosen.has(model) ? `${model} ✓` : `+ ${model}`,
      "aria-label": `Allow model ${model}`, "data-model": model,
      onclick: () => addModel(model),
    }), " ");
  }
  return line;
}

function addModel(model) {
  const models = splitList($("create-models").value);
  if (!models.includes(model)) models.push(model);
  $("create-models").value = models.join(", ");
  showNeeds();
}

function addScope(scope) {
  const scopes = splitList($("create-scopes").value);
  if (!scopes.includes(scope)) scopes.push(scope);
  $("create-scopes").value = scopes.join(", ");
  showNeeds();
}

async function createToken(event) {
  event.preventDefault();
  const body = {
    name: $("create-name").value.trim(),
    routes: splitList($("create-routes").value),
    scopes: splitList($("create-scopes").value),
  };
  const models = splitList($("create-models").value);
  if (models.length) body.models = models;
  const ttl = $("create-ttl").value.trim();
  const rate = $("create-rate").value.trim();
  const tokenLimit = $("create-token-limit").value.trim();
  if (ttl) body.ttl = ttl;
  if (rate) body.rate_limit = rate;
  if (tokenLimit) body.token_limit = tokenLimit;
  try {
    const made = await api("POST", "/v1/tokens", body);
    $("create-dialog").close();
    $("create-form").reset();
    $("notice").textContent = `Created ${made.id}.`;
    showSecret("Token created", made.id, made.token);
  } catch (e) {
    $("create-error").textContent = e.message;
    return;
  }
  refresh();
}

function startRotate(id) {
  $("rotate-id").textContent = id;
  $("rotate-form").dataset.id = id;
  openDialog("rotate-dialog");
}

async function rotateToken(event) {
  event.preventDefault();
  const id = $("rotate-form").dataset.id;
  const grace = $("rotate-grace").value.trim();
  try {
    const made = await api("POST", `/v1/tokens/${encodeURIComponent(id)}/rotate`,
      grace ? { grace } : {});
    $("rotate-dialog").close();
    $("notice").textContent = `Rotated ${made.id}.`;
    showSecret("Token rotated", made.id, made.token);
  } catch (e) {
    $("rotate-error").textContent = e.message;
    return;
  }
  refresh();
}

function startRevoke(id) {
  $("revoke-id").textContent = id;
  $("revoke-form").dataset.id = id;
  openDialog("revoke-dialog");
}

async function revokeToken(event) {
  event.preventDefault();
  const id = $("revoke-form").dataset.id;
  try {
    await api("DELETE", `/v1/tokens/${encodeURIComponent(id)}`);
  } catch (e) {
    $("revoke-error").textContent = e.message;
    return;
  }
  $("revoke-dialog").close();
  if (state.usageId === id) $("usage").hidden = true;
  $("notice").textContent = `Revoked ${id}.`;
  refresh();
}

function refresh() {
  loadTokens(true);
  loadAudit();
}

// --- the secret, shown once ----------------------------------------------------------------

function showSecret(title, id, secret) {
  $("secret-title").textContent = title;
  $("secret-id").textContent = id;
  $("secret-value").value = secret;
  $("secret-copied").textContent = "";
  $("secret-dialog").showModal();
  $("secret-copy").focus();
}

async function copySecret() {
  const input = $("secret-value");
  let copied = false;
  try {
    const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error("timeout")), 1000));
    await Promise.race([navigator.clipboard.writeText(input.value), timeout]);
    copied = true;
  } catch {
    input.focus();
    input.select();
    try {
      copied = document.execCommand("copy");
    } catch {
      copied = false;
    }
  }
  $("secret-copied").textContent = copied
    ? "Copied to the clipboard."
    : "The browser refused the clipboard: the secret is selected, press Ctrl+C.";
}

// --- usage ---------------------------------------------------------------------------------

async function showUsage(id) {
  state.usageId = id;
  const days = $("usage-days").value;
  $("usage").hidden = false;
  const token = state.tokens.find((t) => t.id === id);
  $("usage-title").textContent = token && token.name ? `Usage of ${token.name} · ${id}` : `Usage of ${id}`;
  $("usage-summary").textContent = "Loading…";
  for (const row of $("tokens-body").rows) {
    row.classList.toggle("selected", row.dataset.id === id);
  }
  let usage;
  try {
    usage = await api("GET", `/v1/tokens/${encodeURIComponent(id)}/usage?days=${days}`);
  } catch (e) {
    $("usage-summary").textContent = e.message;
    $("usage-chart").replaceChildren();
    return;
  }
  const allowed = usage.days.reduce((n, d) => n + d.allowed, 0).toLocaleString("en");
  const limited = usage.days.reduce((n, d) => n + d.rate_limited, 0).toLocaleString("en");
  const last = usage.last_used === null ? "never used" : `last used ${ago(usage.last_used)}`;
  $("usage-summary").textContent =
    `${allowed} allowed, ${limited} rate-limited in the last ${usage.days.length} days; ${last}.`;
  const charts = [chart(usage.days, REQUESTS, "Requests"), legend(REQUESTS)];
  const tokens = usage.days.reduce((n, d) => n + TOKENS.reduce((m, s) => m + s.of(d), 0), 0);
  if (tokens) {  // an LLM token: its tokens per day too
    charts.push(el("h3", { text: `LLM tokens: ${tokens.toLocaleString("en")}` }));
    charts.push(chart(usage.days, TOKENS, "LLM tokens"), legend(TOKENS));
  }
  $("usage-chart").replaceChildren(...charts);
  $("usage").scrollIntoView({ block: "nearest" });
}

const REQUESTS = [
  { name: "allowed", cls: "allowed", of: (d) => d.allowed },
  { name: "rate-limited", cls: "limited", of: (d) => d.rate_limited },
];
const TOKENS = [  // LLM tokens counted from responses, all models of a day
  { name: "prompt tokens", cls: "prompt", of: (d) => modelSum(d, "prompt_tokens") },
  { name: "completion tokens", cls: "completion", of: (d) => modelSum(d, "completion_tokens") },
  { name: "estimated", cls: "estimated", of: (d) => modelSum(d, "estimated_completion_tokens") },
];

function modelSum(day, kind) {
  return Object.values(day.models || {}).reduce((n, m) => n + (m[kind] || 0), 0);
}

function chart(days, series, what) {
  const width = 720, height = 190, left = 56, bottom = 22, top = 10;
  const plot = height - bottom - top;
  const total = (d) => series.reduce((n, s) => n + s.of(d), 0);
  const peak = Math.max(1, ...days.map(total));
  const step = (width - left) / days.length;
  const bar = Math.max(4, step * 0.65);
  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `${what} per day, the highest ${peak}`,
  });
  root.append(svg("line", { class: "axis", x1: left, x2: width, y1: top + plot, y2: top + plot }));
  root.append(svg("text", { x: left - 6, y: top + 8, "text-anchor": "end" }, String(peak)));
  root.append(svg("text", { x: left - 6, y: top + plot, "text-anchor": "end" }, "0"));
  const every = days.length > 14 ? 5 : 1;
  days.forEach((d, i) => {
    const x = left + i * step + (step - bar) / 2;
    const group = svg("g", { class: "day" });
    group.append(svg("title", {}, `${d.date}: ` + series.map((s) => `${s.of(d)} ${s.name}`).join(", ")));
    let y = top + plot;
    for (const s of series) {
      const h = (s.of(d) / peak) * plot;
      y -= h;
      group.append(svg("rect", { class: `bar-${s.cls}`, x, width: bar, y, height: h }));
    }
    root.append(group);
    if (i % every === 0 || i === days.length - 1) {
      root.append(svg("text", {
        x: x + bar / 2, y: height - 6, "text-anchor": "middle",
      }, d.date.slice(5)));
    }
  });
  return root;
}

function legend(series) {
  return el(
    "div",
    { class: "legend" },
    ...series.map((s) => el("span", {}, el("span", { class: `swatch ${s.cls}` }), s.name)),
  );
}

// --- audit ---------------------------------------------------------------------------------

async function loadAudit() {
  let events;
  try {
    events = (await api("GET", "/v1/audit?limit=50")).events;
  } catch (e) {
    $("audit-status").textContent = e.status === 403
      ? "The audit log is shown to admin tokens only." : e.message;
    $("audit-body").replaceChildren();
    return;
  }
  $("audit-status").textContent = events.length ? `The newest ${events.length} events.` : "";
  const rows = events.reverse().map((e) => el(
    "tr",
    {},
    el("td", { class: "time", text: utc(e.time) }),
    el("td", { class: "id", text: e.actor }),
    el("td", { text: e.action }),
    el("td", { class: "id", text: e.target }),
    el("td", { class: "detail", text: describe(e.detail) }),
  ));
  if (rows.length === 0) {
    rows.push(el("tr", {}, el("td", { colspan: "5", class: "empty", text: "No events yet." })));
  }
  $("audit-body").replaceChildren(...rows);
}

// An event's detail as "key: value · key: value": times as UTC dates, lists joined.
function describe(detail) {
  if (detail === null || typeof detail !== "object") return String(detail);
  const parts = [];
  for (const [key, value] of Object.entries(detail)) {
    if (value === null || (Array.isArray(value) && value.length === 0)) continue;
    let shown;
    if (Array.isArray(value)) shown = value.join(", ");
    else if (typeof value === "number" && key.endsWith("_at")) shown = `${utc(value)} UTC`;
    else if (typeof value === "object") shown = JSON.stringify(value);
    else shown = String(value);
    parts.push(`${key.replace(/_/g, " ")}: ${shown}`);
  }
  return parts.join(" · ") || "—";
}

// --- wiring ----------------------------------------------------------------------------------

function typing(target) {
  return target instanceof HTMLInputElement || target instanceof HTMLSelectElement ||
    target instanceof HTMLTextAreaElement;
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    $("login-error").textContent = "";
    const token = $("login-token").value.trim();
    if (token) signIn(token);
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("new-token").addEventListener("click", openCreate);
  $("create-routes").addEventListener("input", showNeeds);
  $("create-scopes").addEventListener("input", showNeeds);
  $("create-models").addEventListener("input", showNeeds);
  $("filter-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadTokens(true);
  });
  $("filter-text").addEventListener("input", renderTokens);
  $("more").addEventListener("click", () => loadTokens(false));
  $("audit-refresh").addEventListener("click", loadAudit);
  $("usage-days").addEventListener("change", () => state.usageId && showUsage(state.usageId));
  $("create-form").addEventListener("submit", createToken);
  $("rotate-form").addEventListener("submit", rotateToken);
  $("revoke-form").addEventListener("submit", revokeToken);
  $("secret-copy").addEventListener("click", copySecret);
  $("secret-dialog").addEventListener("close", () => { $("secret-value").value = ""; });
  for (const button of document.querySelectorAll("[data-close]")) {
    button.addEventListener("click", () => button.closest("dialog").close());
  }
  document.addEventListener("keydown", (event) => {
    if ($("app").hidden || document.querySelector("dialog[open]") || typing(event.target)) return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "/") {
      event.preventDefault();
      $("filter-text").focus();
    } else if (event.key === "n") {
      event.preventDefault();
      openCreate();
    }
  });
  if (sessionStorage.getItem(KEY)) showApp();
  else $("login-token").focus();
});
