// Shared by every dashboard page (overview, task browser, task page, history): the API call
// that carries the key, table helpers, time formats. No build step: plain ES2020.
"use strict";

const $ = (sel) => document.querySelector(sel);
const PRIOS = ["high", "default", "low"];
const KEY_ITEM = "taskstream-api-key";

function apiKey() { return sessionStorage.getItem(KEY_ITEM) || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (apiKey()) headers["X-API-Key"] = apiKey();
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) { $("#key-form").hidden = false; throw new Error("API key needed"); }
  return response;
}

// The answer's JSON, or an Error carrying the API's {"error"} message.
async function apiJson(path, options = {}) {
  const response = await api(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

// The header's key form: shown on a 401, stores the key for this tab and calls `onKey`.
function keyForm(onKey) {
  $("#key-form").onsubmit = (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY_ITEM, $("#api-key").value);
    $("#key-form").hidden = true;
    onKey();
  };
}

function cell(text) { const td = document.createElement("td"); td.textContent = text ?? "–"; return td; }

function wrap(node) { const td = document.createElement("td"); td.append(node); return td; }

function fill(tbody, rows) {
  tbody.replaceChildren(...rows.map((values) => {
    const tr = document.createElement("tr");
    values.forEach((v) => tr.append(v instanceof Node ? wrap(v) : cell(v)));
    return tr;
  }));
}

function pill(el, text, ok) { el.textContent = text; el.className = "pill " + (ok ? "ok" : "bad"); }

function link(href, text) { const a = document.createElement("a"); a.href = href; a.textContent = text; return a; }

// A duration in seconds, short: 850 ms, 12.3 s, 4.5 min, 2.1 h, 3.0 d.
function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "–";
  const s = Math.abs(seconds);
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${(s / 60).toFixed(1)} min`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

// Seconds from an ISO-8601 time to now (negative: still ahead), by this browser's clock.
function since(iso) { return iso ? (Date.now() - Date.parse(iso)) / 1000 : null; }

function shortTime(iso) { return iso ? iso.replace("T", " ").replace(/\.\d+Z$/, "Z") : "–"; }

// The task page of a task (the queue is a hint: the task is found without it).
function taskHref(evalId, queue) {
  return "/dashboard/tasks/" + encodeURIComponent(evalId) + (queue ? "?queue=" + encodeURIComponent(queue) : "");
}

// Every queue /status names: the default queue first, then the named ones.
function queueNames(status) { return [status.queue, ...Object.keys(status.queues || {})]; }

function setOptions(select, names, wanted) {
  const have = Array.from(select.options).map((o) => o.value);
  if (have.join() !== names.join()) select.replaceChildren(...names.map((n) => new Option(n, n)));
  select.value = names.includes(wanted) ? wanted : names[0];
}
