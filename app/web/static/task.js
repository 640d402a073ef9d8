// A task's page: its record (GET /tasks/{id}), what the record leaves out (GET
// /tasks/{id}/detail: payload, holder, dead letter, the timeline from the events stream),
// and the actions its state allows: retry a dead letter, cancel, terminate.
"use strict";

const evalId = decodeURIComponent(location.pathname.split("/").pop());
const hint = new URLSearchParams(location.search).get("queue") || "";
const WAITING = ["queued", "scheduled", "retrying", "deferred"];
let record = null;

function suffix() { return hint ? "?queue=" + encodeURIComponent(hint) : ""; }

function fact(dl, name, value) {
  if (value === null || value === undefined || value === "") return;
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.dataset.fact = name;
  dd.append(value instanceof Node ? value : String(value));
  dl.append(dt, dd);
}

function showFacts(t, d) {
  const dl = $("#facts");
  dl.replaceChildren();
  fact(dl, "queue", t.queue);
  fact(dl, "priority", t.priority);
  fact(dl, "tenant", t.tenant);
  fact(dl, "attempts", t.attempts);
  fact(dl, "position", t.position);
  fact(dl, "eta", t.eta);
  fact(dl, "created", shortTime(t.created_at));
  fact(dl, "due", t.run_at && shortTime(t.run_at));
  fact(dl, "started", t.started_at && shortTime(t.started_at));
  fact(dl, t.status === "processing" ? "holder" : "last holder", d.worker);
  fact(dl, "lease until", d.lease_expires_at && shortTime(d.lease_expires_at));
  fact(dl, "elapsed", t.status === "processing" ? duration(since(t.started_at)) : null);
  fact(dl, "finished", t.completed_at && shortTime(t.completed_at));
  if (t.depends_on) {
    const span = document.createElement("span");
    t.depends_on.forEach((id, i) => { if (i) span.append(", "); span.append(link(taskHref(id, t.queue), id)); });
    fact(dl, "parents", span);
  }
}

function showProgress(report) {
  $("#progress-box").hidden = !report;
  if (!report) return;
  $("#progress").value = report.progress;
  $("#progress-text").textContent = `${report.progress}%` + (report.message ? ` ${report.message}` : "") + (report.attempt ? ` (attempt ${report.attempt})` : "");
}

function showTimeline(events, complete) {
  const first = events.length ? Date.parse(events[0].at) : 0;
  $("#timeline").replaceChildren(...events.map((e) => {
    const li = document.createElement("li");
    li.dataset.state = e.state;
    const offset = (Date.parse(e.at) - first) / 1000;
    const what = e.progress !== undefined ? `progress ${JSON.stringify(e.progress)}` : e.state;
    li.textContent = `${shortTime(e.at)}  +${duration(offset)}  ${what}` + (e.attempt ? ` (attempt ${e.attempt})` : "");
    return li;
  }));
  $("#timeline-note").hidden = complete;
}

function pretty(value) { return value === null || value === undefined ? "–" : JSON.stringify(value, null, 2); }

function showOutcome(t, d) {
  $("#payload").textContent = pretty(d.payload);
  $("#result").textContent = pretty(t.result);
  const dead = d.dead_letter || {};
  const error = t.error || dead.error;
  $("#error-box").hidden = !error;
  $("#error").textContent = error || "";
  const trace = dead.traceback || (dead.detail ? pretty(dead.detail) : "");
  $("#traceback-box").hidden = !trace;
  $("#traceback").textContent = trace;
  $("#callback-box").hidden = !t.callback;
  $("#callback").textContent = pretty(t.callback);
}

function showActions(state) {
  $("#retry").disabled = state !== "failed";
  $("#cancel").disabled = !WAITING.includes(state);
  $("#terminate").disabled = state !== "processing";
}

async function load() {
  let detail;
  try {
    record = await apiJson("/tasks/" + encodeURIComponent(evalId) + suffix());
    detail = await apiJson("/tasks/" + encodeURIComponent(evalId) + "/detail");
  } catch (err) { showError(err); return; }
  $("#task-error").hidden = true;
  const state = $("#task-state");
  state.textContent = record.status;
  state.className = "pill state-" + record.status;
  $("#back").href = "/dashboard/tasks?state=" + record.status + "&queue=" + encodeURIComponent(record.queue);
  showFacts(record, detail);
  showProgress(record.progress);
  showTimeline(detail.timeline, detail.timeline_complete);
  showOutcome(record, detail);
  showActions(record.status);
}

function showError(err) {
  $("#task-error").textContent = String(err.message || err);
  $("#task-error").hidden = false;
}

async function act(path) {
  try { await apiJson(path, { method: "POST" }); } catch (err) { showError(err); return; }
  await load();
}

const queueArg = () => (record && record.queue ? "?queue=" + encodeURIComponent(record.queue) : "");
$("#retry").onclick = () => act(`/dlq/${encodeURIComponent(evalId)}/retry${queueArg()}`);
$("#cancel").onclick = () => act(`/tasks/${encodeURIComponent(evalId)}/cancel`);
$("#terminate").onclick = () => act(`/tasks/${encodeURIComponent(evalId)}/cancel?terminate=true`);
$("#refresh").onclick = () => load();
$("#task-id").textContent = evalId;
document.title = `taskstream · ${evalId}`;
keyForm(() => load());
showActions(null);
load();
setInterval(() => { if (record && !["completed", "failed", "cancelled", "expired"].includes(record.status)) load(); }, 3000);
