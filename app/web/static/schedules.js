// taskstream dashboard: the cron schedules (GET /schedules), each with a Pause or Resume
// button. Uses $, api and fill of dashboard.js (loaded first).
"use strict";

function scheduleWhen(s) { return s.cron ? `${s.cron} (${s.timezone})` : `every ${s.every}s`; }

function scheduleButton(s) {
  const action = s.paused ? "resume" : "pause";
  const button = document.createElement("button");
  button.textContent = s.paused ? "Resume" : "Pause";
  button.className = "schedule-" + action;
  button.dataset.name = s.name;
  button.onclick = async () => {
    await api(`/schedules/${encodeURIComponent(s.name)}/${action}`, { method: "POST" });
    refreshSchedules();
  };
  return button;
}

async function refreshSchedules() {
  let body;
  try { body = await (await api("/schedules")).json(); } catch (err) { return; }
  const rows = body.schedules;
  const tbody = $("#schedules tbody");
  fill(tbody, rows.map((s) => [s.name, scheduleWhen(s), s.paused ? "paused" : "active", s.next_run_at, s.last_run_at, scheduleButton(s)]));
  rows.forEach((s, i) => { tbody.children[i].dataset.name = s.name; });
}

refreshSchedules();
setInterval(refreshSchedules, 2000);
