// The task browser: one list per queue and state from GET /tasks?state=&queue=&tenant=&q=
// &limit=&cursor= (CONTRACT: {"tasks": [records], "next_cursor"}), paged by cursor; the
// filters live in the page's URL, so a list can be linked to and reloaded.
"use strict";

const STATES = ["queued", "processing", "scheduled", "retrying", "deferred", "completed", "failed", "cancelled", "expired"];

// The columns of each state's list: [heading, value of a record].
const idCol = ["eval_id", (t, q) => link(taskHref(t.eval_id, q), t.eval_id)];
const prioCol = ["priority", (t) => t.priority];
const tenantCol = ["tenant", (t) => t.tenant];
const attemptsCol = ["attempts", (t) => t.attempts];
const doneCol = ["finished", (t) => shortTime(t.completed_at)];
const agoCol = ["ago", (t) => duration(since(t.completed_at))];
const COLUMNS = {
  queued: [["position", (t) => t.position], idCol, prioCol, tenantCol, ["age", (t) => duration(since(t.created_at))], ["eta", (t) => shortTime(t.eta)]],
  processing: [idCol, prioCol, ["holder", (t) => t.worker ?? t.holder ?? t.consumer], ["started", (t) => shortTime(t.started_at)], ["elapsed", (t) => duration(since(t.started_at))], attemptsCol, ["progress", (t) => (t.progress ? `${t.progress.progress}%` : null)]],
  scheduled: [idCol, prioCol, tenantCol, ["due", (t) => shortTime(t.run_at)], ["in", (t) => duration(-since(t.run_at))]],
  retrying: [idCol, prioCol, ["due", (t) => shortTime(t.run_at)], ["in", (t) => duration(-since(t.run_at))], attemptsCol, ["last error", (t) => t.error]],
  deferred: [idCol, prioCol, tenantCol, ["parents", (t) => parents(t.depends_on)], ["created", (t) => shortTime(t.created_at)]],
  completed: [idCol, prioCol, doneCol, agoCol, attemptsCol, ["took", (t) => duration((Date.parse(t.completed_at) - Date.parse(t.started_at)) / 1000)]],
  failed: [idCol, prioCol, doneCol, agoCol, attemptsCol, ["error", (t) => t.error]],
  cancelled: [idCol, prioCol, doneCol, agoCol, attemptsCol],
  expired: [idCol, prioCol, tenantCol, doneCol, agoCol],
};

const view = { state: "queued", queue: "", tenant: "", q: "", limit: "50" };
let cursors = [""];  // the cursor of each page seen so far; the last is the current page's
let nextCursor = null;

function parents(ids) {
  const span = document.createElement("span");
  (ids || []).forEach((id, i) => { if (i) span.append(", "); span.append(link(taskHref(id, view.queue), id)); });
  return span;
}

function readUrl() {
  const params = new URLSearchParams(location.search);
  for (const key of Object.keys(view)) if (params.get(key)) view[key] = params.get(key);
  if (!STATES.includes(view.state)) view.state = "queued";
}

function writeUrl() {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(view)) if (value && !(key === "limit" && value === "50")) params.set(key, value);
  history.replaceState(null, "", "?" + params.toString());
}

function showTabs() {
  $("#states").replaceChildren(...STATES.map((state) => {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = state;
    button.dataset.state = state;
    button.setAttribute("aria-pressed", String(state === view.state));
    button.onclick = () => { view.state = state; restart(); };
    return button;
  }));
}

async function loadQueues() {
  try {
    const status = await apiJson("/status");
    setOptions($("#queue"), queueNames(status), view.queue || status.queue);
    view.queue = $("#queue").value;
  } catch (err) { showError(err); }
}

function listUrl() {
  const params = new URLSearchParams({ state: view.state, limit: view.limit });
  for (const key of ["queue", "tenant", "q"]) if (view[key]) params.set(key, view[key]);
  const cursor = cursors[cursors.length - 1];
  if (cursor) params.set("cursor", cursor);
  return "/tasks?" + params.toString();
}

async function loadPage() {
  writeUrl();
  showTabs();
  let page;
  try { page = await apiJson(listUrl()); } catch (err) { showError(err); return; }
  $("#list-error").hidden = true;
  nextCursor = page.next_cursor || null;
  const columns = COLUMNS[view.state];
  $("#tasks thead tr").replaceChildren(...columns.map(([heading]) => { const th = document.createElement("th"); th.textContent = heading; return th; }));
  fill($("#tasks tbody"), page.tasks.map((t) => columns.map(([, value]) => value(t, t.queue || view.queue))));
  Array.from($("#tasks tbody").children).forEach((tr, i) => { tr.dataset.id = page.tasks[i].eval_id; });
  $("#empty").hidden = page.tasks.length > 0;
  $("#page-no").textContent = `page ${cursors.length}`;
  $("#prev").disabled = cursors.length === 1;
  $("#next").disabled = !nextCursor;
}

function showError(err) {
  $("#list-error").textContent = String(err.message || err);
  $("#list-error").hidden = false;
}

function restart() { cursors = [""]; loadPage(); }

$("#filters").onsubmit = (e) => {
  e.preventDefault();
  view.queue = $("#queue").value;
  view.tenant = $("#tenant").value.trim();
  view.q = $("#q").value.trim();
  view.limit = $("#limit").value;
  restart();
};
$("#queue").onchange = () => { view.queue = $("#queue").value; restart(); };
$("#limit").onchange = () => { view.limit = $("#limit").value; restart(); };
$("#next").onclick = () => { if (nextCursor) { cursors.push(nextCursor); loadPage(); } };
$("#prev").onclick = () => { if (cursors.length > 1) { cursors.pop(); loadPage(); } };
keyForm(() => start());

async function start() {
  readUrl();
  $("#tenant").value = view.tenant;
  $("#q").value = view.q;
  $("#limit").value = view.limit;
  await loadQueues();
  await loadPage();
}
start();
