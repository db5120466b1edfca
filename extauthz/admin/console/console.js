// extauthz console: plain JavaScript over the management API (/v1/), no build step and
// nothing from other hosts. The pasted token lives in sessionStorage and travels as an
// Authorization header; there are no cookies, so there is nothing for CSRF to ride on.
// Every value from the API reaches the page through textContent, never as HTML.
"use strict";

const KEY = "extauthz.token";
const $ = (id) => document.getElementById(id);
const state = {
  cursor: null, tokens: [], usageId: null, routes: {},
  admin: false, teams: [], teamId: null, team: null, editing: null,
};

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

function link(href, text) {
  return el("a", { href, text });
}

// A definition list of [term, value] pairs; a value is text or a node.
function facts(pairs) {
  return pairs.flatMap(([term, value]) => [el("dt", { text: term }), el("dd", {}, value)]);
}

const teamHref = (id) => `#teams/${encodeURIComponent(id)}`;
const compact = new Intl.NumberFormat("en", { notation: "compact" });
const plural = (n, what) => `${n.toLocaleString("en")} ${what}${n === 1 ? "" : "s"}`;

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

async function showApp() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("session").hidden = false;
  $("nav").hidden = false;
  $("session-label").textContent = "Signed in";
  $("login-token").value = "";
  $("main").focus();
  loadTokens(true);
  loadAudit();
  // What the caller may do decides which controls are shown (the API decides what is done):
  // only admin tokens read the audit log; a team manager sees its own team only.
  const [admin, teams] = await Promise.all([
    api("GET", "/v1/audit?limit=1").then(() => true, () => false),
    api("GET", "/v1/teams").then((r) => r.teams, () => []),
  ]);
  if (!sessionStorage.getItem(KEY)) return;  // (signed out meanwhile)
  state.admin = admin;
  state.teams = teams;
  $("session-label").textContent = admin ? "Signed in · admin"
    : teams.length ? `Signed in · manager of team ${teams[0].id}` : "Signed in · manager";
  $("new-team").hidden = !admin;
  route();
}

function signOut(message = "") {
  sessionStorage.removeItem(KEY);
  for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
  $("app").hidden = true;
  $("session").hidden = true;
  $("nav").hidden = true;
  $("usage").hidden = true;
  $("team").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  for (const id of ["tokens-body", "audit-body", "usage-facts", "usage-chart", "usage-models",
    "teams-body", "team-facts", "members-body", "team-chart"]) {
    $(id).replaceChildren();
  }
  $("notice").textContent = "";
  $("teams-notice").textContent = "";
  Object.assign(state, { admin: false, teams: [], teamId: null, team: null });
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
    [t.id, t.name, t.team || "", ...t.routes, ...t.scopes]
      .some((v) => v.toLowerCase().includes(needle)),
  );
  const rows = shown.map(tokenRow);
  if (rows.length === 0) {
    rows.push(el("tr", {}, el("td", { colspan: "8", class: "empty", text: "No tokens here." })));
  }
  $("tokens-body").replaceChildren(...rows);
  const more = state.cursor !== null;
  $("more").hidden = !more;
  const count = `${shown.length} token${shown.length === 1 ? "" : "s"}`;
  $("tokens-status").textContent = more ? `${count} shown; more to load.` : `${count}.`;
}

function expiresCell(t) {
  const cell = t.expires_at === null ? el("td", { text: "never" })
    : el("td", { title: `${utc(t.expires_at)} UTC`, text: until(t.expires_at) });
  if (t.expires_at !== null && t.expires_at <= Date.now() / 1000) cell.className = "expired";
  return cell;
}

function usedCell(t) {
  return t.last_used === null ? el("td", { class: "muted", text: "never" })
    : el("td", { title: `${utc(t.last_used)} UTC`, text: ago(t.last_used) });
}

const scopeTags = (t) => tags(
  [...t.scopes, ...(t.models || []).map((m) => `model:${m}`)],
  new Set(["admin", "tokens:manage"]),
);

function tokenRow(t) {
  const row = el(
    "tr",
    { "data-id": t.id },
    el("td", { text: t.name || "—" }),
    el("td", { class: "id", text: t.id }),
    el("td", { class: "id" }, t.team ? link(teamHref(t.team), t.team) : "—"),
    tags(t.routes, new Set(["*"])),
    scopeTags(t),
    expiresCell(t),
    usedCell(t),
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
  teamChoices();
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

// The teams the caller may put a token in: an admin any (or none), a manager its own only
// (the API makes a manager's tokens in its team, and refuses any other).
function teamChoices() {
  const select = $("create-team");
  const none = state.admin || !state.teams.length;
  const options = none ? [el("option", { value: "", text: "no team" })] : [];
  for (const t of state.teams) {
    options.push(el("option", { value: t.id, text: t.name ? `${t.name} (${t.id})` : t.id }));
  }
  select.replaceChildren(...options);
  select.disabled = !state.admin;
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
  const budget = $("create-budget").value.trim();
  const cidrs = splitList($("create-cidrs").value);
  if (ttl) body.ttl = ttl;
  if (rate) body.rate_limit = rate;
  if (tokenLimit) body.token_limit = tokenLimit;
  if (budget) body.budget = budget;
  if (cidrs.length) body.allowed_cidrs = cidrs;
  if ($("create-team").value) body.team = $("create-team").value;
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
  if (!$("view-teams").hidden) route();
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
  let token = state.tokens.find((t) => t.id === id);
  $("usage-title").textContent = token && token.name ? `Usage of ${token.name} · ${id}` : `Usage of ${id}`;
  $("usage-summary").textContent = "Loading…";
  for (const row of $("tokens-body").rows) {
    row.classList.toggle("selected", row.dataset.id === id);
  }
  const path = `/v1/tokens/${encodeURIComponent(id)}`;
  let usage;
  try {
    [token, usage] = await Promise.all([
      api("GET", path), api("GET", `${path}/usage?days=${days}`),
    ]);
  } catch (e) {
    $("usage-summary").textContent = e.message;
    $("usage-chart").replaceChildren();
    $("usage-models").replaceChildren();
    $("usage-facts").replaceChildren();
    return;
  }
  if (state.usageId !== id) return;  // (another token was chosen meanwhile)
  $("usage-title").textContent = token.name ? `Usage of ${token.name} · ${id}` : `Usage of ${id}`;
  $("usage-facts").replaceChildren(...facts([
    ["Team", token.team ? link(teamHref(token.team), token.team) : "none"],
    ["Routes", token.routes.join(", ")],
    ["LLM models", token.models ? token.models.join(", ") : "any its routes serve"],
    ["Rate limit", token.rate_limit || "none"],
    ["LLM token limit", token.token_limit || "none"],
    ["Budget", token.budget || "none"],
    ["Allowed addresses", token.allowed_cidrs ? token.allowed_cidrs.join(", ") : "any"],
  ]));
  const allowed = usage.days.reduce((n, d) => n + d.allowed, 0).toLocaleString("en");
  const limited = usage.days.reduce((n, d) => n + d.rate_limited, 0).toLocaleString("en");
  const last = usage.last_used === null ? "never used" : `last used ${ago(usage.last_used)}`;
  $("usage-summary").textContent =
    `${allowed} allowed, ${limited} rate-limited in the last ${usage.days.length} days; ${last}.`;
  $("usage-chart").replaceChildren(
    chart(usage.days, REQUESTS, "Requests"), legend(REQUESTS), ...spendChart(usage.days),
  );
  $("usage-models").replaceChildren(...modelCharts(usage.days));
  $("usage").scrollIntoView({ block: "nearest" });
}

const REQUESTS = [
  { name: "allowed", cls: "allowed", of: (d) => d.allowed },
  { name: "rate-limited", cls: "limited", of: (d) => d.rate_limited },
];
// One model's day ({date, requests, prompt_tokens, ...}: a day's `models[name]`)
const MODEL_REQUESTS = [{ name: "requests", cls: "allowed", of: (m) => m.requests || 0 }];
const MODEL_TOKENS = [  // LLM tokens counted from responses
  { name: "prompt tokens", cls: "prompt", of: (m) => m.prompt_tokens || 0 },
  { name: "completion tokens", cls: "completion", of: (m) => m.completion_tokens || 0 },
  { name: "estimated", cls: "estimated", of: (m) => m.estimated_completion_tokens || 0 },
];

// What a day's LLM responses cost, all models together (USD, at the policy's prices)
const SPEND = [{
  name: "spend (USD)", cls: "spend",
  of: (d) => Object.values(d.models || {}).reduce((n, m) => n + (m.cost_usd || 0), 0),
}];

// The spend chart of some days, when anything was priced in them.
function spendChart(days) {
  const total = days.reduce((n, d) => n + SPEND[0].of(d), 0);
  if (!days.some((d) => Object.values(d.models || {}).some((m) => "cost_usd" in m))) return [];
  return [
    el("h4", {}, "Spend", el("span", { class: "muted", text: ` · $${total.toFixed(6)}` })),
    chart(days, SPEND, "Spend in USD", { id: "spend" }), legend(SPEND),
  ];
}

// Usage split per model (a token's or a team's days): for each model used in them, its
// requests and its LLM tokens per day, side by side.
function modelCharts(days) {
  const names = [...new Set(days.flatMap((d) => Object.keys(d.models || {})))].sort();
  if (!names.length) return [el("p", { class: "status", text: "No LLM model used these days." })];
  return names.map((name) => {
    const per = days.map((d) => ({ ...((d.models || {})[name] || {}), date: d.date }));
    const sum = (series) => per.reduce((n, m) => n + series.reduce((k, s) => k + s.of(m), 0), 0);
    const totals = ` · ${plural(sum(MODEL_REQUESTS), "request")} · ` +
      plural(sum(MODEL_TOKENS), "LLM token");
    const size = { width: 480, height: 150, model: name };
    const half = (series, what) => el("div", {}, chart(per, series, what, size), legend(series));
    return el(
      "div",
      { class: "model", "data-model": name },
      el("h4", {}, el("span", { class: "mono", text: name }),
        el("span", { class: "muted", text: totals })),
      el(
        "div",
        { class: "pair" },
        half(MODEL_REQUESTS, `Requests of ${name}`),
        half(MODEL_TOKENS, `LLM tokens of ${name}`),
      ),
    );
  });
}

function chart(days, series, what, { width = 720, height = 190, model, id } = {}) {
  const left = 56, bottom = 22, top = 10;
  const plot = height - bottom - top;
  const total = (d) => series.reduce((n, s) => n + s.of(d), 0);
  const peak = Math.max(1, ...days.map(total));
  const step = (width - left) / days.length;
  const bar = Math.max(4, step * 0.65);
  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `${what} per day, the highest ${peak}`,
  });
  if (id !== undefined) root.setAttribute("data-chart", id);
  root.append(svg("line", { class: "axis", x1: left, x2: width, y1: top + plot, y2: top + plot }));
  root.append(svg("text", { x: left - 6, y: top + 8, "text-anchor": "end" }, compact.format(peak)));
  root.append(svg("text", { x: left - 6, y: top + plot, "text-anchor": "end" }, "0"));
  const every = days.length > 14 ? 5 : step < 40 ? 2 : 1;
  days.forEach((d, i) => {
    const x = left + i * step + (step - bar) / 2;
    const group = svg("g", { class: "day", "data-date": d.date });
    if (model !== undefined) group.setAttribute("data-model", model);
    group.append(svg("title", {}, `${d.date}: ` + series.map((s) => `${s.of(d)} ${s.name}`).join(", ")));
    let y = top + plot;
    for (const s of series) {
      const h = (s.of(d) / peak) * plot;
      y -= h;
      group.append(svg("rect", { class: `bar-${s.cls}`, x, width: bar, y, height: h }));
    }
    root.append(group);
    if ((days.length - 1 - i) % every === 0) {  // (counted back from today, labelled)
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

// --- pages ---------------------------------------------------------------------------------

// The address names the page: #tokens (the default), #teams, #teams/<id> (a team's detail).
function route() {
  if ($("app").hidden) return;
  const [view, id] = location.hash.slice(1).split("/");  // (team ids need no decoding)
  const teams = view === "teams";
  $("view-tokens").hidden = teams;
  $("view-teams").hidden = !teams;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.view === (teams ? "teams" : "tokens")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (!teams) return;
  loadTeams();
  if (id) showTeam(id);
  else {
    state.teamId = null;
    $("team").hidden = true;
  }
}

// --- teams ---------------------------------------------------------------------------------

async function loadTeams() {
  $("teams-status").textContent = "Loading…";
  try {
    state.teams = (await api("GET", "/v1/teams")).teams;
  } catch (e) {
    $("teams-status").textContent = e.message;
    return;
  }
  const rows = state.teams.map(teamRow);
  if (!rows.length) {
    const none = state.admin ? "No teams yet." : "Your token is in no team.";
    rows.push(el("tr", {}, el("td", { colspan: "8", class: "empty", text: none })));
  }
  $("teams-body").replaceChildren(...rows);
  $("teams-status").textContent = plural(state.teams.length, "team") + ".";
  // how many tokens each has (GET /v1/teams/{id}), filled in as they come
  for (const team of state.teams) {
    api("GET", `/v1/teams/${encodeURIComponent(team.id)}`).then((t) => {
      const cell = $("teams-body").querySelector(`tr[data-id="${CSS.escape(t.id)}"] td.count`);
      if (cell) cell.textContent = String(t.tokens);
    }, () => {});
  }
}

const limitText = (limit) => limit || "none";
const modelsText = (models) => (models === null ? "any" : models.join(", "));

function teamRow(t) {
  const actions = el("td", { class: "actions" }, el("a", {
    href: teamHref(t.id), class: "button small", text: "Open", "aria-label": `Open team ${t.id}`,
  }));
  if (state.admin) actions.append(...teamButtons(t, "small"));
  const row = el(
    "tr",
    { "data-id": t.id },
    el("td", { text: t.name || "—" }),
    el("td", { class: "id" }, link(teamHref(t.id), t.id)),
    t.models === null ? el("td", { class: "muted", text: "any" }) : tags(t.models, new Set()),
    el("td", { text: limitText(t.rate_limit) }),
    el("td", { text: limitText(t.token_limit) }),
    el("td", { class: "count", text: "…" }),
    el("td", { class: "time", text: t.created_at ? utc(t.created_at).slice(0, 10) : "—" }),
    actions,
  );
  if (t.id === state.teamId) row.classList.add("selected");
  return row;
}

function teamButtons(t, size = "") {
  return [
    el("button", {
      type: "button", class: size, text: "Edit", "aria-label": `Edit team ${t.id}`,
      onclick: () => startTeam(t),
    }),
    el("button", {
      type: "button", class: size, text: "Delete", "aria-label": `Delete team ${t.id}`,
      onclick: () => startDeleteTeam(t.id),
    }),
  ];
}

// A team's page: its record, its tokens (GET /v1/tokens?team=, every page) and its usage.
async function showTeam(id) {
  state.teamId = id;
  $("team").hidden = false;
  $("team-title").textContent = `Team ${id}`;
  $("members-status").textContent = "Loading…";
  const path = `/v1/teams/${encodeURIComponent(id)}`;
  let team;
  const members = [];
  try {
    team = await api("GET", path);
    for (let cursor = null, first = true; first || cursor !== null; first = false) {
      const query = new URLSearchParams({ team: id, limit: "1000" });
      if (cursor !== null) query.set("cursor", cursor);
      const page = await api("GET", `/v1/tokens?${query}`);
      members.push(...page.tokens);
      cursor = page.next_cursor;
    }
  } catch (e) {
    $("team-facts").replaceChildren();
    $("team-actions").replaceChildren();
    $("members-body").replaceChildren();
    $("team-chart").replaceChildren();
    $("members-status").textContent = e.message;
    return;
  }
  if (state.teamId !== id) return;
  state.team = team;
  $("team-title").textContent = team.name ? `Team ${team.name} · ${id}` : `Team ${id}`;
  $("team-actions").replaceChildren(...(state.admin ? teamButtons(team) : []));
  $("team-facts").replaceChildren(...facts([
    ["LLM models", modelsText(team.models)],
    ["Request limit", `${limitText(team.rate_limit)} (pooled across its tokens)`],
    ["LLM token limit", `${limitText(team.token_limit)} (pooled across its tokens)`],
    ["Budget", `${limitText(team.budget)} (pooled across its tokens)`],
    ["Allowed addresses", team.allowed_cidrs ? team.allowed_cidrs.join(", ") : "any"],
    ["Tokens", String(team.tokens)],
    ["Created", team.created_at ? `${utc(team.created_at)} UTC` : "—"],
  ]));
  const rows = members.map(memberRow);
  if (!rows.length) {
    rows.push(el("tr", {}, el("td", { colspan: "7", class: "empty", text: "No tokens in it." })));
  }
  $("members-body").replaceChildren(...rows);
  const unseen = team.tokens - members.length;  // (a manager's own, and what it could not make)
  $("members-status").textContent = plural(members.length, "token") +
    (unseen > 0 ? ` shown; ${unseen} more that are not yours to see.` : ".");
  for (const row of $("teams-body").rows) row.classList.toggle("selected", row.dataset.id === id);
  showTeamUsage();
}

function memberRow(t) {
  return el(
    "tr",
    { "data-id": t.id },
    el("td", { text: t.name || "—" }),
    el("td", { class: "id", text: t.id }),
    tags(t.routes, new Set(["*"])),
    scopeTags(t),
    expiresCell(t),
    usedCell(t),
    el("td", { class: "actions" }, el("button", {
      type: "button", class: "small", text: "Usage", "aria-label": `Usage of ${t.id}`,
      onclick: () => {
        location.hash = "#tokens";
        showUsage(t.id);
      },
    })),
  );
}

async function showTeamUsage() {
  const id = state.teamId;
  const days = $("team-days").value;
  $("team-usage-summary").textContent = "Loading…";
  let usage;
  try {
    usage = await api("GET", `/v1/teams/${encodeURIComponent(id)}/usage?days=${days}`);
  } catch (e) {
    $("team-usage-summary").textContent = e.message;
    $("team-chart").replaceChildren();
    return;
  }
  if (state.teamId !== id) return;
  const allowed = usage.days.reduce((n, d) => n + d.allowed, 0);
  const limited = usage.days.reduce((n, d) => n + d.rate_limited, 0);
  $("team-usage-summary").textContent = `${allowed.toLocaleString("en")} allowed, ` +
    `${limited.toLocaleString("en")} rate-limited in the last ${usage.days.length} days, ` +
    `over its ${plural(usage.tokens, "token")}.`;
  $("team-chart").replaceChildren(...spendChart(usage.days), ...modelCharts(usage.days));
}

// The team dialog: a new team (`t` undefined) or a change to `t` (every field sent: an
// emptied limit is removed, emptied models allow any).
function startTeam(t) {
  state.editing = t ? t.id : null;
  $("team-dialog-title").textContent = t ? `Edit team ${t.id}` : "New team";
  $("team-id").value = t ? t.id : "";
  $("team-id").disabled = Boolean(t);
  $("team-name").value = t ? t.name : "";
  $("team-models").value = t && t.models ? t.models.join(", ") : "";
  $("team-rate").value = (t && t.rate_limit) || "";
  $("team-token-limit").value = (t && t.token_limit) || "";
  $("team-budget").value = (t && t.budget) || "";
  $("team-cidrs").value = t && t.allowed_cidrs ? t.allowed_cidrs.join(", ") : "";
  openDialog("team-dialog");
  $(t ? "team-name" : "team-id").focus();
}

async function saveTeam(event) {
  event.preventDefault();
  const id = state.editing;
  const models = splitList($("team-models").value);
  const rate = $("team-rate").value.trim(), tokenLimit = $("team-token-limit").value.trim();
  const budget = $("team-budget").value.trim(), cidrs = splitList($("team-cidrs").value);
  const body = { name: $("team-name").value.trim() };
  try {
    if (id === null) {
      body.id = $("team-id").value.trim();
      if (models.length) body.models = models;
      if (rate) body.rate_limit = rate;
      if (tokenLimit) body.token_limit = tokenLimit;
      if (budget) body.budget = budget;
      if (cidrs.length) body.allowed_cidrs = cidrs;
      await api("POST", "/v1/teams", body);
    } else {
      Object.assign(body, models.length ? { models } : { all_models: true });
      body.rate_limit = rate || "none";
      body.token_limit = tokenLimit || "none";
      body.budget = budget || "none";
      Object.assign(body, cidrs.length ? { allowed_cidrs: cidrs } : { any_address: true });
      await api("PATCH", `/v1/teams/${encodeURIComponent(id)}`, body);
    }
  } catch (e) {
    $("team-error").textContent = e.message;
    return;
  }
  $("team-dialog").close();
  const made = id === null ? body.id : id;
  $("teams-notice").textContent = id === null ? `Created team ${made}.` : `Saved team ${made}.`;
  if (location.hash === teamHref(made)) route();
  else location.hash = teamHref(made);
  loadAudit();
}

function startDeleteTeam(id) {
  const cell = $("teams-body").querySelector(`tr[data-id="${CSS.escape(id)}"] td.count`);
  const count = state.team && state.team.id === id ? state.team.tokens : Number(cell?.textContent);
  $("delete-team-id").textContent = id;
  $("delete-team-form").dataset.id = id;
  $("delete-team-revoke").checked = false;
  $("delete-team-count").textContent = Number.isFinite(count) ? plural(count, "token") : "tokens";
  $("delete-team-choice").hidden = !(count > 0);
  openDialog("delete-team-dialog");
}

async function deleteTeam(event) {
  event.preventDefault();
  const id = $("delete-team-form").dataset.id;
  const revoke = $("delete-team-revoke").checked ? "?revoke_tokens=true" : "";
  try {
    await api("DELETE", `/v1/teams/${encodeURIComponent(id)}${revoke}`);
  } catch (e) {
    $("delete-team-error").textContent = e.message;
    if (e.status === 409) $("delete-team-choice").hidden = false;  // (it has tokens)
    return;
  }
  $("delete-team-dialog").close();
  $("teams-notice").textContent = `Deleted team ${id}.`;
  if (state.teamId === id) location.hash = "#teams";
  else route();
  loadTokens(true);
  loadAudit();
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
  $("team-days").addEventListener("change", () => state.teamId && showTeamUsage());
  $("new-team").addEventListener("click", () => startTeam());
  $("team-form").addEventListener("submit", saveTeam);
  $("delete-team-form").addEventListener("submit", deleteTeam);
  window.addEventListener("hashchange", route);
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
    const teams = !$("view-teams").hidden;
    if (event.key === "/" && !teams) {
      event.preventDefault();
      $("filter-text").focus();
    } else if (event.key === "n" && (!teams || state.admin)) {
      event.preventDefault();
      if (teams) startTeam();
      else openCreate();
    }
  });
  if (sessionStorage.getItem(KEY)) showApp();
  else $("login-token").focus();
});
