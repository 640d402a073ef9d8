// taskstream dashboard, the overview: polls /status and /stats, follows /events (server-sent
// events read with fetch, so the API key can go in a header), drives the DLQ and
// pause/resume. No build step: plain ES2020, the vendored uPlot, common.js's helpers.
"use strict";

const MAX_EVENTS = 50;
let queue = null;
const plots = {};

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
  showOldest($("#counts tbody"), status.oldest_waiting);
  $("#count-dlq").textContent = status.dlq;
  $("#totals").textContent = Object.entries(status.totals).map(([k, v]) => `${k} ${v}`).join(" · ");
  fill($("#consumers tbody"), status.consumers.map((c) => [c.name, c.pending, c.idle_ms, (c.priorities || []).join(",")]));
  fill($("#executors tbody"), status.executors.map((e) => [e.url, e.healthy ? "yes" : "no", e.in_flight, e.routed, e.failures, e.latency_ms]));
  syncQueueChoices([status.queue, ...Object.keys(status.queues || {}), ...(status.eas || []).flatMap((r) => [r.service, r.service + "/sink"])]);
  fill($("#named tbody"), Object.entries(status.queues || {}).map(([n, q]) => [n, ...states.map((s) => q.states[s]), oldestOf(q.oldest_waiting), q.dlq, q.consumers.length, q.paused ? "yes" : "no"]));
  showFlow([[status.queue, status.flow], ...Object.entries(status.queues || {}).map(([n, q]) => [n, q.flow])]);
  fill($("#eas tbody"), (status.eas || []).map((r) => [r.service, r.target, r.input.queued, r.input.processing, r.input.retrying, r.input.dlq, r.sink.length, r.input.consumers.length + r.sink.consumers.length]));
}

// Fair share and limits (docs/flow-control.md): a row per queue with a limit or tenants'
// tasks waiting; per priority, the tenants' waiting tasks and the first few next in line.
function showFlow(flows) {
  const shown = flows.filter(([, f]) => f && (f.limits.rate || f.limits.max_in_flight != null || Object.keys(f.tenants).length));
  const tenants = (f) => PRIOS.filter((p) => f.tenants[p]).map((p) => {
    const next = f.tenants[p].next.slice(0, 3).map((t) => `${t.tenant} ${t.waiting}`).join(", ");
    return `${p}: ${f.tenants[p].tenant_tasks}` + (next ? ` (${next})` : "");
  }).join(" · ");
  const rows = shown.map(([name, f]) => [name, f.limits.rate, f.rate ? (f.rate.available || `0, next in ${f.rate.next_in_ms} ms`) : null, f.limits.max_in_flight, f.in_flight, tenants(f) || null]);
  fill($("#flow tbody"), rows);
  shown.forEach(([name], i) => { $("#flow tbody").children[i].dataset.queue = name; });
}

// The age of the oldest waiting task per priority (taskstream_oldest_waiting_seconds), as
// one more row of the counts table; the total column is the oldest of all.
function showOldest(tbody, oldest) {
  const tr = document.createElement("tr");
  tr.id = "oldest-waiting";
  tr.append(cell("oldest waiting"), cell(oldestOf(oldest)), ...PRIOS.map((p) => cell(oldest[p].seconds ? duration(oldest[p].seconds) : "–")));
  PRIOS.forEach((p, i) => { if (oldest[p].eval_id) tr.children[i + 2].title = oldest[p].eval_id; });
  tbody.append(tr);
}

function oldestOf(oldest) {
  const seconds = Math.max(...PRIOS.map((p) => (oldest && oldest[p] ? oldest[p].seconds : 0)));
  return seconds ? duration(seconds) : "–";
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
