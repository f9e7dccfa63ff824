// The devices view: each vehicle's state, last heartbeat, queue depth and fps, and under it, across the whole
// width, why it may be quiet and its model. Problems had a column of their own, the seventh: cut off at 1024 px
// and narrower, and scrolled to, the vehicle's name went out of sight.
//
// A fleet of 10,000 drew 20,000 rows on every refresh (3.2 s of a frozen page, 665 screens to scroll, nothing to
// search): boxes with a problem come first, then the silent ones, a search and a choice narrow the list, and
// only ROWS_SHOWN rows are drawn until more are asked for.
import { escapeHtml, formatTime } from "./model.js";

export const ROWS_SHOWN = 200;
const STATES = ["online", "stale", "offline", "stopped", "revoked", "unknown"];
const SILENT = new Set(["offline", "stale"]);
// One collator: localeCompare with options builds one per call (282 ms against 11 ms for 10,000 names).
const BY_NAME = new Intl.Collator(undefined, { numeric: true });

export function renderDevices(tbody, devices, onSelect, summary, view = {}) {
  const { query = "", show = "all", limit = ROWS_SHOWN, onMore = null } = view;
  const chosen = devices.filter((d) => shown(d, show) && matches(d, query)).sort(byUrgency);
  const rows = chosen.slice(0, limit).flatMap((d) => deviceRows(d, onSelect));
  if (chosen.length > limit && onMore) {
    const more = document.createElement("tr");
    more.className = "more";
    more.innerHTML = `<td colspan="5"><button type="button">show ${Math.min(ROWS_SHOWN, chosen.length - limit)}
      more (${limit} of ${chosen.length} shown)</button></td>`;
    more.querySelector("button").addEventListener("click", onMore);
    rows.push(more);
  }
  tbody.replaceChildren(...rows);
  if (!chosen.length) {
    tbody.innerHTML = `<tr><td colspan="5" class="hint">${devices.length ? "no vehicle matches" : "no devices yet"}</td></tr>`;
  }
  if (summary) summarise(summary, devices);
}

function shown(d, show) {
  if (show === "problems") return d.problems.length > 0;
  if (show === "silent") return SILENT.has(d.state);
  return true;
}

function matches(d, query) {
  const q = query.trim().toLowerCase();
  if (!q) return true;
  // The health words too: a manager searches "frozen", the problem reads "camera shows one picture".
  return [d.id, d.name, d.state, d.model || "", ...d.problems, ...d.healthWords]
    .some((text) => String(text).toLowerCase().includes(q));
}

// Problems first, then the vans gone silent, then the rest; by name within each.
function byUrgency(a, b) {
  const rank = (d) => (d.problems.length ? 0 : SILENT.has(d.state) ? 1 : 2);
  return rank(a) - rank(b) || BY_NAME.compare(a.name, b.name);
}

function deviceRows(d, onSelect) {
  const troubled = d.problems.length > 0;
  const tr = document.createElement("tr");
  tr.dataset.deviceId = d.id;
  tr.className = troubled ? "device has-problems" : "device";
  // The name is cut to its column (one 80-character name pushed every other column off the side).
  tr.innerHTML = `<td title="${escapeHtml(d.name)}"><span class="name">${escapeHtml(d.name)}</span></td>
    <td><span class="state state-${escapeHtml(d.state)}">${escapeHtml(d.state)}</span></td>
    <td title="${escapeHtml(formatTime(d.lastSeen))}">${shortTime(d.lastSeen)}</td>
    <td>${d.queueDepth ?? "–"}</td>
    <td>${d.fps !== undefined && d.fps !== null ? Number(d.fps).toFixed(1) : "–"}</td>`;
  const detail = document.createElement("tr");
  detail.dataset.detailOf = d.id;
  detail.className = troubled ? "detail has-problems" : "detail";
  const problems = troubled ? d.problems.map((p) => `<div>${escapeHtml(p)}</div>`).join("") : "no problem reported";
  detail.innerHTML = `<td colspan="5">${silence(d)}<div class="problems">${problems}</div>
    <div class="model">${escapeHtml(d.model || "model –")}</div></td>`;
  for (const row of [tr, detail]) {
    row.title = d.fix ? "show the last known position on the map" : "no position reported yet";
    row.addEventListener("click", () => onSelect(d));
  }
  return [tr, detail];
}

// "467 of 10000 boxes show a problem · 7000 online, 800 stale, 1200 offline, ...": the silent ones were counted
// nowhere on the page.
function summarise(summary, devices) {
  const troubled = devices.filter((d) => d.problems.length).length;
  const counts = STATES.map((s) => [s, devices.filter((d) => d.state === s).length]).filter(([, n]) => n);
  const states = counts.map(([s, n]) => `${n} ${s}`).join(", ");
  const head = troubled ? `${troubled} of ${devices.length} boxes show a problem` :
    `${devices.length} ${devices.length === 1 ? "box" : "boxes"}, none shows a problem`;
  summary.textContent = states ? `${head} · ${states}` : head;
  summary.classList.toggle("has-problems", troubled > 0);
}

// A silent van: standing at its last status is most likely switched off at ignition-off; driving, it lost its
// power or its network on the road. Both read "offline" alike.
function silence(d) {
  if (!SILENT.has(d.state) || d.lastSpeed === null) return "";
  const how = d.lastSpeed < 1 ? "standing (ignition-off?)" : `driving at ${Math.round(d.lastSpeed * 3.6)} km/h`;
  return `<div class="silence">went silent ${how}</div>`;
}

// "15:47" today, "12-05 15:47" before (UTC, as every time on the dashboard): the full stamp took four lines.
function shortTime(iso) {
  const full = formatTime(iso);
  if (full === "–" || !iso) return full;
  const today = new Date().toISOString().slice(0, 10);
  const day = full.slice(0, 10);
  // Another day with its year: "12-05" reads as 12 May to most of the world.
  return day === today ? full.slice(11, 16) : `${day} ${full.slice(11, 16)}`;
}
