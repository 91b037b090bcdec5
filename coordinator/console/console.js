// Cohort console: talks to the coordinator's JSON API (docs/api/openapi.yaml) and listens to
// its server-sent events. No framework and no build step: this file is embedded in the binary.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  token: null, tasks: [], current: null, axis: "round", tab: "rounds",
  live: {}, lastRound: null, events: null, refreshTimer: null,
};

// ---- token ----
function loadToken() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    localStorage.setItem("cohort-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);
  }
  state.token = localStorage.getItem("cohort-token");
}

async function api(method, path, body, type) {
  const headers = { Authorization: "Bearer " + state.token };
  if (body !== undefined) headers["Content-Type"] = type || "application/json";
  const r = await fetch(path, { method, headers, body });
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (r.status === 401) { showLogin("The token was refused: " + (json && json.error ? json.error.message : r.status)); throw new Error("unauthenticated"); }
  if (!r.ok) {
    const e = new Error(json && json.error ? json.error.message : (r.status + " " + text));
    e.code = json && json.error ? json.error.code : String(r.status);
    throw e;
  }
  return json;
}

function showLogin(message) {
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").hidden = !message;
  $("login-error").textContent = message || "";
  if (state.events) { state.events.close(); state.events = null; }
}

// ---- formatting ----
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const pct = (v) => (v === null || v === undefined ? "–" : (v * 100).toFixed(1) + "%");
const num = (v, d = 3) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
const secs = (ms) => (ms === null || ms === undefined ? "–" : ms < 1000 ? ms + " ms" : (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s");
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "–");
const short = (h) => (h ? h.slice(0, 10) + "…" : "–");

// ---- task list ----
async function refreshTasks() {
  const data = await api("GET", "/api/v1/tasks");
  state.tasks = data.tasks;
  const list = $("task-list");
  list.innerHTML = "";
  $("no-tasks").hidden = data.tasks.length > 0;
  for (const t of data.tasks) {
    const li = document.createElement("li");
    li.className = "task-item" + (t.id === state.current ? " selected" : "");
    li.dataset.id = t.id;
    const total = t.rounds || 0;
    const p = total ? Math.min(100, (100 * t.rounds_done) / total) : 0;
    li.innerHTML = `<div class="row"><span class="name">${esc(t.id)}</span><span class="badge ${esc(t.state)}">${esc(t.state)}</span></div>
      <div class="meta">${t.rounds_done} of ${total} rounds</div><div class="mini-progress"><div style="width:${p}%"></div></div>`;
    li.addEventListener("click", () => selectTask(t.id));
    list.appendChild(li);
  }
  if (state.current) renderHeader();
}

async function refreshDevices() {
  const d = await api("GET", "/api/v1/devices");
  $("dev-connected").textContent = d.connections;
  $("dev-accounts").textContent = d.accounts.contributors;
  $("conn-count").textContent = d.connections + " connected";
}

function currentTask() { return state.tasks.find((t) => t.id === state.current); }

function selectTask(id) {
  state.current = id;
  state.lastRound = null;
  location.hash = "task=" + encodeURIComponent(id);
  for (const li of document.querySelectorAll(".task-item")) li.classList.toggle("selected", li.dataset.id === id);
  $("empty-view").hidden = true;
  $("task-view").hidden = false;
  refreshTask();
}

// ---- one task ----
function renderHeader() {
  const t = currentTask();
  if (!t) return;
  $("task-title").textContent = t.id;
  const badge = $("task-state");
  badge.textContent = t.state;
  badge.className = "badge " + t.state;
  $("btn-start").hidden = t.state !== "created";
  $("btn-pause").hidden = t.state !== "running";
  $("btn-resume").hidden = t.state !== "paused";
  $("btn-stop").hidden = !["created", "running", "paused"].includes(t.state);
  $("btn-download").hidden = t.rounds_done === 0 && t.state === "created";
  $("btn-download").href = `/api/v1/tasks/${encodeURIComponent(t.id)}/model?token=${encodeURIComponent(state.token)}`;
  $("rounds-done").textContent = `${t.rounds_done} / ${t.rounds || "?"}`;
  $("progress-bar").style.width = (t.rounds ? Math.min(100, (100 * t.rounds_done) / t.rounds) : 0) + "%";
  renderLive(t.live);
}

function renderLive(live) {
  const t = currentTask();
  if (!live) {
    $("phase").textContent = t && t.state === "running" ? "starting" : (t ? t.state : "–");
    $("devices-now").textContent = "–";
    return;
  }
  const s = live.status;
  let phase = s.phase;
  if (s.phase === "selecting") phase = `selecting for round ${s.round}`;
  if (s.phase === "in_round") phase = `round ${s.round}` + (s.attempt > 1 ? ` (attempt ${s.attempt})` : "") + " · SecAgg+";
  $("phase").textContent = phase;
  const selected = s.phase === "in_round" ? s.selected : "–";
  $("devices-now").textContent = `${live.checked_in} / ${selected}`;
}

async function refreshTask() {
  const id = state.current;
  if (!id) return;
  const enc = encodeURIComponent(id);
  const [show, rounds, metrics, privacy] = await Promise.all([
    api("GET", `/api/v1/tasks/${enc}`),
    api("GET", `/api/v1/tasks/${enc}/rounds`),
    api("GET", `/api/v1/tasks/${enc}/metrics`),
    api("GET", `/api/v1/tasks/${enc}/privacy`).catch((e) => ({ error: e.message })),
  ]);
  if (id !== state.current) return;
  const i = state.tasks.findIndex((t) => t.id === id);
  if (i >= 0) state.tasks[i] = Object.assign(state.tasks[i], show); else state.tasks.push(show);
  renderHeader();
  $("definition").textContent = show.definition;
  renderRounds(rounds);
  state.metrics = metrics;
  renderCharts();
  renderPrivacy(privacy);
  if (state.tab === "log") refreshLog(false);
  if (state.tab === "invites") refreshInvites();
  if (state.tab === "audit") refreshAudit();
  if (state.tab === "ledger") refreshLedger();
}

function renderRounds(data) {
  const body = $("rounds-table").querySelector("tbody");
  const rows = data.rounds.slice().reverse();
  body.innerHTML = rows.map((r) => {
    const m = r.metrics || {};
    const summed = r.participants;
    const inR2 = m.dropped === undefined ? "–" : m.dropped;
    const before = r.selected && m.dropped !== undefined ? Math.max(0, r.selected - summed - m.dropped - (m.removed || 0)) : "–";
    return `<tr data-round="${r.round}"><td class="num">${r.round}</td><td><span class="badge ${r.state === "finished" ? "finished" : r.state === "running" ? "running" : "paused"}">${esc(r.state)}</span></td>
      <td class="num">${r.attempts}</td><td class="num">${r.selected || "–"}</td><td class="num">${summed}</td><td class="num">${before}</td><td class="num">${inR2}</td>
      <td class="num">${secs(m.took_ms)}</td><td class="num">${pct(m.accuracy)}</td><td class="num">${num(m.loss)}</td></tr>`;
  }).join("");
  const last = data.rounds.filter((r) => r.state === "finished").pop();
  if (last) {
    const m = last.metrics || {};
    $("last-duration").textContent = secs(m.took_ms);
    const before = Math.max(0, (last.selected || 0) - last.participants - (m.dropped || 0) - (m.removed || 0));
    $("last-dropouts").textContent = `dropouts: ${before} before R2 · ${m.dropped || 0} in R2 · ${m.removed || 0} removed`;
    $("last-accuracy").textContent = pct(m.accuracy);
    $("last-loss").textContent = m.loss === null || m.loss === undefined ? "" : "loss " + num(m.loss);
  } else {
    $("last-duration").textContent = "–";
    $("last-dropouts").textContent = "";
    $("last-accuracy").textContent = "–";
    $("last-loss").textContent = "";
  }
}

// ---- charts (inline SVG) ----
function chart(el, series, opts) {
  const W = 460, H = 220, L = 44, R = 12, T = 10, B = 30;
  const all = series.flatMap((s) => s.points);
  if (!all.length) { el.innerHTML = `<p class="chart-empty">No evaluations yet. They appear after each evaluated round.</p>`; return; }
  let x0 = Math.min(...all.map((p) => p.x)), x1 = Math.max(...all.map((p) => p.x));
  let y0 = opts.y0 !== undefined ? opts.y0 : Math.min(...all.map((p) => p.y));
  let y1 = opts.y1 !== undefined ? opts.y1 : Math.max(...all.map((p) => p.y));
  if (x1 === x0) { x1 = x0 + 1; }
  if (y1 === y0) { y1 = y0 + 1; }
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  let svg = `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(opts.label)}">`;
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    svg += `<line class="grid" x1="${L}" x2="${W - R}" y1="${sy(y)}" y2="${sy(y)}"/>`;
    svg += `<text x="${L - 6}" y="${sy(y) + 3}" text-anchor="end">${opts.fy(y)}</text>`;
  }
  const xticks = [];
  for (let i = 0; i <= 4; i++) {
    const x = x0 + ((x1 - x0) * i) / 4;
    const label = opts.fx(x, x0);
    if (!xticks.some((t) => t.label === label)) xticks.push({ x: opts.integerX ? Math.round(x) : x, label });
  }
  for (const t of xticks) svg += `<text x="${sx(t.x)}" y="${H - B + 16}" text-anchor="middle">${t.label}</text>`;
  svg += `<line class="axis" x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}"/><line class="axis" x1="${L}" x2="${L}" y1="${T}" y2="${H - B}"/>`;
  for (const s of series) {
    if (!s.points.length) continue;
    svg += `<polyline class="line-${s.cls}" points="${s.points.map((p) => `${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join(" ")}"/>`;
    if (s.points.length <= 60) for (const p of s.points) svg += `<circle class="pt-${s.cls}" cx="${sx(p.x).toFixed(1)}" cy="${sy(p.y).toFixed(1)}" r="2.5"><title>${opts.fx(p.x, x0)}: ${opts.fy(p.y)}</title></circle>`;
  }
  el.innerHTML = svg + "</svg>";
}

function renderCharts() {
  const series = (state.metrics && state.metrics.series) || {};
  const byTime = state.axis === "time";
  const pts = (name) => (series[name] || []).filter((p) => !byTime || p.at).map((p) => ({ x: byTime ? p.at : p.round, y: p.value }));
  const fx = byTime ? (x, x0) => Math.round(x - x0) + " s" : (x) => String(Math.round(x));
  chart($("chart-accuracy"), [{ cls: "a", points: pts("eval_accuracy") }, { cls: "b", points: pts("fed_eval_accuracy") }],
    { label: "accuracy", y0: 0, y1: 1, fy: (y) => Math.round(y * 100) + "%", fx, integerX: !byTime });
  chart($("chart-loss"), [{ cls: "a", points: pts("eval_loss") }, { cls: "b", points: pts("fed_eval_loss") }],
    { label: "loss", y0: 0, fy: (y) => y.toFixed(2), fx, integerX: !byTime });
}

// ---- round log ----
async function refreshLog(announce) {
  const data = await api("GET", `/api/v1/tasks/${encodeURIComponent(state.current)}/log`);
  const v = data.verification;
  const out = $("verify-result");
  if (announce || !v.intact) {
    out.className = v.intact ? "verify-ok" : "verify-bad";
    out.textContent = v.intact
      ? `Chain intact: ${data.entries.length} entries, head ${short(data.head)}, checked ${new Date().toLocaleTimeString()}.`
      : `Chain broken at round ${v.round}: ${v.message}`;
  }
  $("log-table").querySelector("tbody").innerHTML = data.entries.slice().reverse().map((e) =>
    `<tr><td class="num">${e.round}</td><td class="num">${e.participants}</td><td class="mono" title="${e.output_weights}">${short(e.output_weights)}</td>
     <td class="mono" title="${e.hash}">${short(e.hash)}</td><td class="mono" title="${e.prev}">${short(e.prev)}</td></tr>`).join("");
}

// ---- privacy budget ----
function renderPrivacy(p) {
  const on = !!(p && p.enabled);
  $("privacy-tile").hidden = !on;
  $("privacy-none").hidden = on;
  if (p && p.error) $("privacy-none").textContent = "The privacy budget cannot be read: " + p.error;
  $("privacy-detail").hidden = !on;
  if (!on) return;
  const eps = (x) => (x === null || x === undefined ? "–" : Number(x).toFixed(2));
  const share = p.epsilon_budget ? Math.min(100, (100 * p.epsilon_spent) / p.epsilon_budget) : 0;
  $("privacy-spent").textContent = `ε ${eps(p.epsilon_spent)} / ${eps(p.epsilon_budget)}`;
  $("privacy-bar").style.width = share + "%";
  $("privacy-left").textContent = p.rounds_left === 0 ? "budget spent" : `${p.rounds_left} of ${p.max_rounds} rounds left`;
  $("privacy-mode").textContent = p.mode + (p.adaptive_clip ? " · adaptive clipping" : "");
  $("privacy-noise-by").textContent = p.noise_added_by === "devices" ? "devices, before masking (distributed discrete Gaussian)" : "the coordinator, to the unmasked sum";
  $("privacy-budget").textContent = `ε ${eps(p.epsilon_budget)} at δ ${p.delta}, at most ${p.max_rounds} rounds`;
  $("privacy-spent-detail").textContent = `ε ${eps(p.epsilon_spent)} after ${p.rounds_published} rounds`;
  $("privacy-rounds-left").textContent = String(p.rounds_left);
  $("privacy-noise").textContent = `z = ${p.noise_multiplier}, clip ${p.clip}` + (p.adaptive_clip ? ` (initial; target quantile ${p.adaptive_clip.target_quantile})` : "");
  $("privacy-sampling").textContent = p.sampling.kind === "none" ? "none (no amplification: sound for any selection)" : `Poisson at rate ${p.sampling.rate}`;
  chart($("chart-privacy"), [
    { cls: "b", points: p.planned.map((q) => ({ x: q.round, y: q.epsilon })) },
    { cls: "a", points: p.spent.map((q) => ({ x: q.round, y: q.epsilon })) },
  ], { label: "epsilon by round", y0: 0, fy: (y) => y.toFixed(2), fx: (x) => String(Math.round(x)), integerX: true });
}

// ---- ledger ----
async function refreshLedger() {
  const data = await api("GET", `/api/v1/tasks/${encodeURIComponent(state.current)}/ledger`);
  $("ledger-totals").querySelector("tbody").innerHTML = data.totals.map((t) =>
    `<tr><td>${esc(t.account)}</td><td class="num">${num(t.credit, 4)}</td><td class="num">${t.rounds}</td></tr>`).join("");
  $("ledger-rounds").querySelector("tbody").innerHTML = data.rounds.slice().reverse().map((r) =>
    `<tr><td class="num">${r.round}</td><td>${r.basis === "held_out_loss" ? "loss drop" : "fixed reward"}</td><td class="num">${num(r.improvement, 4)}</td>
     <td class="num">${r.members.length}</td><td class="mono" title="${r.members_hash}">${short(r.members_hash)}</td></tr>`).join("");
}

// ---- invites and audit ----
async function refreshInvites() {
  const data = await api("GET", "/api/v1/invites");
  $("invites-table").querySelector("tbody").innerHTML = data.invites.map((i) =>
    `<tr><td class="mono">${esc(i.id)}</td><td><span class="badge ${i.status === "open" ? "running" : i.status === "used" ? "finished" : "stopped"}">${esc(i.status)}</span></td>
     <td>${when(i.created_at)}</td><td>${i.expires_at ? when(i.expires_at) : "never"}</td><td>${esc(i.used_by || "–")}</td></tr>`).join("");
}

async function refreshAudit() {
  const data = await api("GET", "/api/v1/audit?limit=200");
  $("audit-table").querySelector("tbody").innerHTML = data.entries.map((e) =>
    `<tr><td>${when(e.at)}</td><td>${esc(e.actor)}</td><td class="mono">${esc(e.action)}</td><td>${esc(e.target)}</td><td class="${e.outcome === "ok" ? "verify-ok" : "verify-bad"}">${esc(e.outcome)}</td></tr>`).join("");
}

// ---- actions ----
async function act(action) {
  const err = $("action-error");
  err.hidden = true;
  for (const b of document.querySelectorAll(".actions button")) b.disabled = true;
  try {
    await api("POST", `/api/v1/tasks/${encodeURIComponent(state.current)}/${action}`);
    await refreshTasks();
    await refreshTask();
  } catch (e) {
    if (e.message !== "unauthenticated") { err.textContent = e.message; err.hidden = false; }
  } finally {
    for (const b of document.querySelectorAll(".actions button")) b.disabled = false;
  }
}

const EXAMPLE = `id = "digits"
rounds = 20
evaluate_every = 1

[model]
input_shape = [64]
num_classes = 10
layers = [{ type = "linear", out = 32 }, { type = "relu" }, { type = "linear", out = 10 }]

[training]
epochs = 1
batch_size = 32
learning_rate = 0.05

[selection]
clients_per_round = 20
over_selection = 0.3
window_secs = 30
`;

async function createTask() {
  const err = $("create-error");
  err.hidden = true;
  try {
    const r = await api("POST", "/api/v1/tasks", $("task-toml").value, "application/toml");
    $("create-dialog").close();
    await refreshTasks();
    selectTask(r.id);
  } catch (e) {
    err.textContent = e.message;
    err.hidden = false;
  }
}

// ---- live updates ----
function scheduleRefresh() {
  if (state.refreshTimer) return;
  state.refreshTimer = setTimeout(async () => {
    state.refreshTimer = null;
    try { await refreshTasks(); await refreshTask(); } catch (_) { /* shown elsewhere */ }
  }, 150);
}

function connectEvents() {
  if (state.events) state.events.close();
  const es = new EventSource("/api/v1/events?token=" + encodeURIComponent(state.token));
  state.events = es;
  es.onopen = () => $("live-dot").classList.add("on");
  es.onerror = () => $("live-dot").classList.remove("on");
  es.onmessage = (m) => {
    let e;
    try { e = JSON.parse(m.data); } catch (_) { return; }
    if (e.type === "live") {
      $("conn-count").textContent = e.connections + " connected";
      $("dev-connected").textContent = e.connections;
      for (const t of state.tasks) t.live = e.tasks[t.id] || null;
      if (state.current) renderLive((e.tasks || {})[state.current]);
      return;
    }
    scheduleRefresh();
  };
}

// ---- start ----
async function start() {
  loadToken();
  if (!state.token) { showLogin(); return; }
  try {
    await refreshTasks();
  } catch (_) { return; }
  $("login").hidden = true;
  $("app").hidden = false;
  refreshDevices().catch(() => {});
  connectEvents();
  const m = location.hash.match(/task=([^&]+)/);
  const wanted = m ? decodeURIComponent(m[1]) : null;
  if (wanted && state.tasks.some((t) => t.id === wanted)) selectTask(wanted);
  else if (state.tasks.length) selectTask(state.tasks[0].id);
  setInterval(() => refreshDevices().catch(() => {}), 10000);
}

document.addEventListener("DOMContentLoaded", () => {
  $("token-save").addEventListener("click", () => {
    localStorage.setItem("cohort-token", $("token-input").value.trim());
    start();
  });
  $("token-input").addEventListener("keydown", (e) => { if (e.key === "Enter") $("token-save").click(); });
  $("logout").addEventListener("click", () => { localStorage.removeItem("cohort-token"); state.token = null; showLogin(); });
  $("btn-start").addEventListener("click", () => act("start"));
  $("btn-pause").addEventListener("click", () => act("pause"));
  $("btn-resume").addEventListener("click", () => act("resume"));
  $("btn-stop").addEventListener("click", () => { if (confirm("Stop this task for good? Its log and checkpoints stay.")) act("stop"); });
  $("new-task").addEventListener("click", () => {
    if (!$("task-toml").value) $("task-toml").value = EXAMPLE;
    $("create-error").hidden = true;
    $("create-dialog").showModal();
  });
  $("create-task").addEventListener("click", createTask);
  $("verify-log").addEventListener("click", () => refreshLog(true).catch((e) => { $("verify-result").textContent = e.message; }));
  $("issue-invite").addEventListener("click", async () => {
    const r = await api("POST", "/api/v1/invites", JSON.stringify({ hours: 168 }));
    const box = $("invite-code");
    box.textContent = "Invite code (shown once): " + r.code;
    box.hidden = false;
    refreshInvites();
  });
  for (const [id, axis] of [["axis-round", "round"], ["axis-time", "time"]]) {
    $(id).addEventListener("click", () => {
      state.axis = axis;
      $("axis-round").classList.toggle("seg-on", axis === "round");
      $("axis-time").classList.toggle("seg-on", axis === "time");
      renderCharts();
    });
  }
  for (const b of document.querySelectorAll(".tabs button")) {
    b.addEventListener("click", () => {
      state.tab = b.dataset.tab;
      for (const o of document.querySelectorAll(".tabs button")) o.classList.toggle("tab-on", o === b);
      for (const t of document.querySelectorAll(".tab")) t.hidden = t.id !== "tab-" + state.tab;
      if (state.tab === "log") refreshLog(false);
      if (state.tab === "invites") refreshInvites();
      if (state.tab === "audit") refreshAudit();
      if (state.tab === "ledger") refreshLedger();
    });
  }
  start();
});
