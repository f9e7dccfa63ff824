// The devices view: each vehicle's state, last heartbeat, queue depth and fps, and under it, across the whole
// width, why it may be quiet and its model. Problems had a column of their own, the seventh: cut off at 1024 px
// and narrower, and scrolled to, the vehicle's name went out of sight.
import { escapeHtml, formatTime } from "./model.js";

export function renderDevices(tbody, devices, onSelect, summary) {
  const sorted = [...devices].sort((a, b) => a.name.localeCompare(b.name));
  tbody.replaceChildren(...sorted.flatMap((d) => {
    const troubled = d.problems.length > 0;
    const tr = document.createElement("tr");
    tr.dataset.deviceId = d.id;
    tr.className = troubled ? "device has-problems" : "device";
    tr.innerHTML = `<td>${escapeHtml(d.name)}</td>
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
  }));
  if (!sorted.length) {
    tbody.innerHTML = '<tr><td colspan="5" class="hint">no devices yet</td></tr>';
  }
  if (summary) {
    const troubled = sorted.filter((d) => d.problems.length).length;
    summary.textContent = troubled ? `${troubled} of ${sorted.length} boxes show a problem` :
      `${sorted.length} boxes, none shows a problem`;
    summary.classList.toggle("has-problems", troubled > 0);
  }
}

// A silent van: standing at its last status is most likely switched off at ignition-off; driving, it lost its
// power or its network on the road. Both read "offline" alike.
function silence(d) {
  if (!["offline", "stale"].includes(d.state) || d.lastSpeed === null) return "";
  const how = d.lastSpeed < 1 ? "standing (ignition-off?)" : `driving at ${Math.round(d.lastSpeed * 3.6)} km/h`;
  return `<div class="silence">went silent ${how}</div>`;
}

// "15:47" today, "12-05 15:47" before (UTC, as every time on the dashboard): the full stamp took four lines.
function shortTime(iso) {
  const full = formatTime(iso);
  if (full === "–" || !iso) return full;
  const today = new Date().toISOString().slice(0, 10);
  const day = full.slice(0, 10);
  return day === today ? full.slice(11, 16) : `${full.slice(5, 10)} ${full.slice(11, 16)}`;
}
