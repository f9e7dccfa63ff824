// The devices view: each vehicle's state, last heartbeat, queue depth, model, fps and why it may be quiet.
import { escapeHtml, formatTime } from "./model.js";

export function renderDevices(tbody, devices, onSelect) {
  const sorted = [...devices].sort((a, b) => a.name.localeCompare(b.name));
  tbody.replaceChildren(...sorted.map((d) => {
    const tr = document.createElement("tr");
    tr.dataset.deviceId = d.id;
    tr.innerHTML = `<td>${escapeHtml(d.name)}</td>
      <td><span class="state state-${escapeHtml(d.state)}">${escapeHtml(d.state)}</span></td>
      <td>${formatTime(d.lastSeen)}</td>
      <td>${d.queueDepth ?? "–"}</td>
      <td>${escapeHtml(d.model || "–")}</td>
      <td>${d.fps !== undefined && d.fps !== null ? Number(d.fps).toFixed(1) : "–"}</td>
      <td class="problems">${escapeHtml(d.problems.join("; ")) || "–"}</td>`;
    tr.title = d.fix ? "show the last fix on the map" : "no fix reported yet";
    tr.addEventListener("click", () => onSelect(d));
    return tr;
  }));
  if (!sorted.length) {
    tbody.innerHTML = '<tr><td colspan="7" class="hint">no devices yet</td></tr>';
  }
}
