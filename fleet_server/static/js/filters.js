// The filter form (class, status, severity, date range) and the list of defects sorted by severity.
import { OPEN_STATUSES, severityBand, severityText, escapeHtml, markerSvg, formatTime } from "./model.js";

export function readFilters(form) {
  const value = (name) => form.elements[name].value;
  return {
    className: value("class"),
    status: value("status"),
    minSeverity: Number(value("severity") || 0),
    since: value("since"), // yyyy-mm-dd, inclusive
    until: value("until"), // yyyy-mm-dd, inclusive
  };
}

// The date range keeps a defect seen at any time inside it: first seen before the end, last seen after the start.
export function applyFilters(defects, f) {
  const sinceMs = f.since ? Date.parse(`${f.since}T00:00:00Z`) : -Infinity;
  const untilMs = f.until ? Date.parse(`${f.until}T23:59:59.999Z`) : Infinity;
  return defects.filter((d) => {
    if (f.className && d.className !== f.className) return false;
    if (f.status === "open" && !OPEN_STATUSES.includes(d.status)) return false;
    if (f.status && f.status !== "open" && d.status !== f.status) return false;
    if (d.severity < f.minSeverity) return false;
    const first = d.firstSeen ? Date.parse(d.firstSeen) : NaN;
    const last = d.lastSeen ? Date.parse(d.lastSeen) : first;
    if (Number.isFinite(last) && last < sinceMs) return false;
    if (Number.isFinite(first) && first > untilMs) return false;
    return true;
  });
}

export function fillClassOptions(select, defects) {
  const current = select.value;
  const classes = [...new Set(defects.map((d) => d.className))].sort();
  select.replaceChildren(new Option("all", ""), ...classes.map((c) => new Option(c, c)));
  select.value = classes.includes(current) ? current : "";
}

function countBy(items, key) {
  const counts = new Map();
  for (const item of items) counts.set(key(item), (counts.get(key(item)) || 0) + 1);
  return [...counts.entries()].sort((a, b) => b[1] - a[1]);
}

export function renderCounts(element, shown, total) {
  const chips = (pairs) => pairs.map(([k, n]) => `<span class="chip">${escapeHtml(k)} ${n}</span>`).join("");
  element.innerHTML = `<b id="shown-count">${shown.length}</b> of ${total} defects shown<br>
    ${chips(countBy(shown, (d) => severityBand(d.severity).name))}<br>
    ${chips(countBy(shown, (d) => d.className))}<br>
    ${chips(countBy(shown, (d) => d.status))}`;
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

// The list shows the worst LIST_LIMIT defects (and the selected one): a city's 100k list items took seconds to
// build at every refresh and most of the page's memory. The map shows all of them.
export const LIST_LIMIT = 500;

export function renderList(element, defects, selectedId, onSelect) {
  if (!defects.length) {  // an empty page reads as broken; say why it is empty
    const li = document.createElement("li");
    li.className = "hint empty";
    li.textContent = "No defects match: none reported yet, or the filters hide them.";
    element.replaceChildren(li);
    return;
  }
  const sorted = [...defects].sort((a, b) => (b.severity ?? -1) - (a.severity ?? -1) || b.sightings - a.sightings);
  const listed = sorted.slice(0, LIST_LIMIT);
  const selected = sorted.findIndex((d) => d.id === selectedId);
  if (selected >= LIST_LIMIT) listed.push(sorted[selected]);
  const items = listed.map((d) => {
    const li = document.createElement("li");
    li.dataset.defectId = d.id;
    li.className = d.id === selectedId ? "selected" : "";
    li.innerHTML = `${markerSvg(d.className, d.severity, 18)}
      <div><div>${escapeHtml(d.className)} · <span class="badge badge-${escapeHtml(d.status)}">${escapeHtml(d.status)}</span></div>
      <div class="meta">${plural(d.sightings, "sighting")} · ${plural(d.vehicles, "vehicle")} · last ${formatTime(d.lastSeen)}</div>${
        d.note ? `<div class="meta note" title="${escapeHtml(d.note)}">note: ${escapeHtml(shorten(d.note, 80))}</div>` : ""}</div>
      <span class="sev" title="severity">${severityText(d.severity)}</span>`;
    li.addEventListener("click", () => onSelect(d.id));
    return li;
  });
  if (sorted.length > listed.length) {
    const more = document.createElement("li");
    more.className = "hint more";
    more.textContent = `${sorted.length - listed.length} more, less severe: narrow the filters to list them (the map shows all)`;
    items.push(more);
  }
  element.replaceChildren(...items);
}

// At most MAX characters as people count them: slicing UTF-16 units cut an emoji in half.
function shorten(text, max) {
  const chars = Array.from(text);
  return chars.length > max ? `${chars.slice(0, max - 1).join("")}…` : text;
}
