// taskstream dashboard: polls /status and /stats, follows /events (server-sent events read
// with fetch, so the API key can go in a header), drives the DLQ and pause/resume.
// No build step: plain ES2020 and the vendored uPlot.
"use strict";

const $ = (sel) => document.querySelector(sel);
const PRIOS = ["high", "default", "low"];
const MAX_EVENTS = 50;
let queue = null;
const plots = {};

function apiKey() { return sessionStorage.getItem("taskstream-api-key") || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (apiKey()) headers["X-API-Key"] = apiKey();
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) { $("#key-form").hidden = false; throw new Error("API key needed"); }
  return response;
}

function cell(text) { const td = document.createElement("td"); td.textContent = text ?? "–"; return td; }

function fill(tbody, rows) {
  tbody.replaceChildren(...rows.map((values) => {
    const tr = document.createElement("tr");
    values.forEach((v) => tr.append(v instanceof Node ? wrap(v) : cell(v)));
    return tr;
  }));
}

function wrap(node) { const td = document.createElement("td"); td.append(node); return td; }

function pill(el, text, ok) { el.textContent = text; el.className = "pill " + (ok ? "ok" : "bad"); }

async function refreshStatus() {
  let status;
  try {
    status = await (await api("/status")).json();
  } catch (err) { pill($("#redis"), String(err.message || err), false); return; }
  queue = status.queue;
  $("#queue-name").textContent = "queue " + status.queue;
  pill($("#redis"), "redis ok", true);
  pill($("#paused"), status.paused ? "paused" : "running", !status.paused);
  const states = ["queued", "processing", "scheduled", "retrying", "deferred"];
  fill($("#counts tbody"), states.map((s) => [s, status.states[s], ...PRIOS.map((p) => status.by_priority[s][p])]));
  states.forEach((s) => { $("#counts tbody").children[states.indexOf(s)].id = "count-" + s; });
  $("#count-dlq").textContent = status.dlq;
  $("#totals").textContent = Object.entries(status.totals).map(([k, v]) => `${k} ${v}`).join(" · ");
  fill($("#consumers tbody"), status.consumers.map((c) => [c.name, c.pending, c.idle_ms, (c.priorities || []).join(",")]));
  fill($("#executors tbody"), status.executors.map((e) => [e.url, e.healthy ? "yes" : "no", e.in_flight, e.routed, e.failures, e.latency_ms]));
  syncQueueChoices([status.queue, ...Object.keys(status.queues || {}), ...(status.eas || []).flatMap((r) => [r.service, r.service + "/sink"])]);
  fill($("#named tbody"), Object.entries(status.queues || {}).map(([n, q]) => [n, ...states.map((s) => q.states[s]), q.dlq, q.consumers.length, q.paused ? "yes" : "no"]));
  fill($("#eas tbody"), (status.eas || []).map((r) => [r.service, r.target, r.input.queued, r.input.processing, r.input.retrying, r.input.dlq, r.sink.length, r.input.consumers.length + r.sink.consumers.length]));
}

function syncQueueChoices(names) {
  const select = $("#plot-queue");
  const have = Array.from(select.options).map((o) => o.value);
  if (have.join() === names.join()) return;
  const current = select.value;
  select.replaceChildren(...names.map((n) => new Option(n, n)));
  select.value = names.includes(current) ? current : names[0];
}

async function refreshStats() {
  let stats;
  const selected = $("#plot-queue").value || "";
  const query = selected ? "&queue=" + encodeURIComponent(selected) : "";
  try { stats = await (await api("/stats?minutes=60" + query)).json(); } catch (err) { return; }
  const xs = stats.minutes.map((m) => m.minute);
  const done = stats.minutes.map((m) => m.completed || 0);
  const failed = stats.minutes.map((m) => m.failed || 0);
  const rate = stats.minutes.map((m, i) => (done[i] + failed[i]) ? failed[i] / (done[i] + failed[i]) : null);
  draw("throughput", [xs, done], "completed/min", "#2563eb");
  draw("failures", [xs, rate], "failure rate", "#b91c1c");
}

function draw(name, data, label, stroke) {
  if (plots[name]) { plots[name].setData(data); return; }
  const options = { width: 520, height: 180, series: [{}, { label, stroke, width: 2 }], axes: [{}, {}] };
  plots[name] = new uPlot(options, data, $("#plot-" + name));
}

async function refreshDlq() {
  let dlq;
  try { dlq = await (await api("/dlq?limit=20")).json(); } catch (err) { return; }
  fill($("#dlq tbody"), dlq.tasks.map((t) => [t.eval_id, t.error, t.attempts, t.failed_at, actions(t.eval_id)]));
}

function actions(evalId) {
  const span = document.createElement("span");
  for (const [label, method, path] of [["Retry", "POST", `/dlq/${evalId}/retry`], ["Delete", "DELETE", `/dlq/${evalId}`]]) {
    const button = document.createElement("button");
    button.textContent = label;
    button.className = label.toLowerCase();
    button.dataset.id = evalId;
    button.onclick = async () => { await api(path, { method }); refreshDlq(); refreshStatus(); };
    span.append(button);
  }
  return span;
}

function showEvent(data) {
  const li = document.createElement("li");
  const progress = data.progress !== undefined ? ` ${data.progress}%` : "";
  li.textContent = `${new Date(data.at).toISOString().slice(11, 23)} ${data.eval_id} ${data.state}${progress}` + (data.attempt ? ` (attempt ${data.attempt})` : "");
  li.dataset.id = data.eval_id;
  li.dataset.state = data.state;
  $("#events").prepend(li);
  while ($("#events").children.length > MAX_EVENTS) $("#events").lastChild.remove();
}

async function followEvents() {
  let lastId = "";
  for (;;) {
    try {
      const headers = lastId ? { "Last-Event-ID": lastId } : {};
      const response = await api("/events", { headers });
      pill($("#events-state"), "live", true);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");  // SSE allows CRLF, CR or LF line ends
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, end); buffer = buffer.slice(end + 2);
          const fields = Object.fromEntries(frame.split("\n").map((l) => [l.slice(0, l.indexOf(":")), l.slice(l.indexOf(":") + 2)]));
          if (fields.id) lastId = fields.id;
          if (fields.data) showEvent(JSON.parse(fields.data));
        }
      }
    } catch (err) { /* reconnect below */ }
    pill($("#events-state"), "reconnecting", false);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function setPaused(paused) {
  await api(`/queues/${encodeURIComponent(queue)}/${paused ? "pause" : "resume"}`, { method: "POST" });
  refreshStatus();
}

$("#plot-queue").onchange = () => refreshStats();
$("#pause").onclick = () => setPaused(true);
$("#resume").onclick = () => setPaused(false);
$("#key-form").onsubmit = (e) => {
  e.preventDefault();
  sessionStorage.setItem("taskstream-api-key", $("#api-key").value);
  $("#key-form").hidden = true;
  tick();
};
$("#lookup").onsubmit = async (e) => {
  e.preventDefault();
  const response = await api("/tasks/" + encodeURIComponent($("#lookup-id").value));
  const record = await response.json();
  showProgress(record.progress);
  $("#lookup-result").textContent = JSON.stringify(record, null, 2);
};

// The task view's progress bar: the last report of POST /tasks/{id}/progress, if any.
function showProgress(report) {
  $("#lookup-progress").hidden = !report;
  if (!report) return;
  $("#lookup-bar").value = report.progress;
  $("#lookup-progress-text").textContent = `${report.progress}%` + (report.message ? ` ${report.message}` : "") + ` (attempt ${report.attempt}, ${report.at})`;
}

function tick() { refreshStatus(); refreshStats(); refreshDlq(); }
tick();
setInterval(refreshStatus, 2000);
setInterval(refreshDlq, 5000);
setInterval(refreshStats, 10000);
followEvents();
