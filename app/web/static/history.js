// The history page: GET /stats/history (per minute kept 48 h, per hour kept 90 days) drawn
// as a plain SVG line chart, one line per series, no library.
"use strict";

// [field of a point, colour, label]: `retrying` counts the retries scheduled.
const SERIES = [["completed", "#2563eb", "completed"], ["failed", "#b91c1c", "failed"], ["retrying", "#d97706", "retried"]];
const SVG = "http://www.w3.org/2000/svg";
const W = 960, H = 300, M = { left: 48, right: 12, top: 12, bottom: 28 };

function svg(name, attrs, text) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

// A round upper bound of the y axis and its tick step (1, 2, 5 × 10^n).
function niceMax(max) {
  if (max <= 4) return [4, 1];
  const raw = max / 4, power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((f) => f * power).find((s) => s >= raw);
  return [step * Math.ceil(max / step), step];
}

// An axis label (UTC): the time of day within a day's span, with the date beyond one.
function timeLabel(epoch, span) {
  const iso = new Date(epoch * 1000).toISOString();
  return span <= 86400 ? iso.slice(11, 16) : iso.slice(5, 10) + " " + iso.slice(11, 16);
}

function chart(points, step) {
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": "history" });
  const max = Math.max(0, ...points.flatMap((p) => SERIES.map(([s]) => p[s] || 0)));
  const [top, tick] = niceMax(max);
  const x = (i) => M.left + (points.length > 1 ? (i / (points.length - 1)) * (W - M.left - M.right) : 0);
  const y = (v) => H - M.bottom - (v / top) * (H - M.top - M.bottom);
  for (let v = 0; v <= top; v += tick) {
    root.append(svg("line", { x1: M.left, x2: W - M.right, y1: y(v), y2: y(v), class: "grid" }));
    root.append(svg("text", { x: M.left - 6, y: y(v) + 4, "text-anchor": "end" }, String(v)));
  }
  const ticks = Math.min(6, points.length);
  for (let k = 0; k < ticks; k++) {
    const i = Math.round((k / Math.max(1, ticks - 1)) * (points.length - 1));
    const anchor = k === 0 ? "start" : k === ticks - 1 ? "end" : "middle";
    root.append(svg("text", { x: x(i), y: H - 8, "text-anchor": anchor }, timeLabel(points[i].at, points.length * step)));
  }
  root.append(svg("line", { x1: M.left, x2: W - M.right, y1: y(0), y2: y(0), class: "axis" }));
  for (const [name, color] of [...SERIES].reverse()) {  // the main series drawn last, on top
    const d = points.map((p, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(p[name] || 0).toFixed(1)}`).join("");
    root.append(svg("path", { d, fill: "none", stroke: color, "stroke-width": 2, "data-series": name }));
  }
  return root;
}

function sums(points, step) {
  const hours = (points.length * step) / 3600;
  fill($("#sums tbody"), SERIES.map(([name]) => {
    const values = points.map((p) => p[name] || 0);
    const total = values.reduce((a, b) => a + b, 0);
    return [SERIES.find(([n]) => n === name)[2], total, Math.max(0, ...values), (total / hours).toFixed(1)];
  }));
  Array.from($("#sums tbody").children).forEach((tr, i) => { tr.dataset.series = SERIES[i][0]; });
}

async function load() {
  const [resolution, points] = $("#span").value.split(":");
  const params = new URLSearchParams({ resolution, points, queue: $("#queue").value });
  let body;
  try { body = await apiJson("/stats/history?" + params.toString()); } catch (err) {
    $("#history-error").textContent = String(err.message || err);
    $("#history-error").hidden = false;
    return;
  }
  $("#history-error").hidden = true;
  $("#chart").replaceChildren(chart(body.points, body.step));
  sums(body.points, body.step);
}

async function start() {
  try {
    const status = await apiJson("/status");
    const wanted = new URLSearchParams(location.search).get("queue") || status.queue;
    const eas = (status.eas || []).flatMap((r) => [r.service, r.service + "/sink"]);
    setOptions($("#queue"), [...queueNames(status), ...eas], wanted);
  } catch (err) { $("#history-error").textContent = String(err.message || err); $("#history-error").hidden = false; return; }
  await load();
}

$("#legend").replaceChildren(...SERIES.map(([, color, label]) => { const s = document.createElement("span"); s.textContent = label; s.style.setProperty("--color", color); return s; }));
$("#queue").onchange = () => load();
$("#span").onchange = () => load();
keyForm(() => start());
start();
setInterval(load, 30000);
