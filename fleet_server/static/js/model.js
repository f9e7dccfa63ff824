// How a defect looks (colour by severity, shape by class) and the one place that reads the API's field names.

export const SEVERITY_BANDS = [
  { name: "high", min: 0.67, colour: "#d92d20" },
  { name: "medium", min: 0.34, colour: "#f2994a" },
  { name: "low", min: 0, colour: "#f2c94c" },
];

export const OPEN_STATUSES = ["new", "confirmed", "scheduled", "likely_repaired"];
// What a manager may set (the API's DefectPatch): confirming a new defect or re-opening a dismissed one included.
export const WORKFLOW_STATUSES = ["confirmed", "scheduled", "repaired", "dismissed"];
export const MANAGER_ROLES = ["manager", "admin"];

const SHAPES = {
  pothole: "circle",
  crack: "triangle",
};
const FALLBACK_SHAPE = "diamond";

// A phone's sighting has no severity (nothing was measured on the road): it is unknown, not low.
export const UNKNOWN_SEVERITY = { name: "unknown", colour: "#98a2b3" };

export function severityBand(severity) {
  if (!Number.isFinite(severity)) return UNKNOWN_SEVERITY;
  return SEVERITY_BANDS.find((band) => severity >= band.min);
}

export function severityText(severity) {
  return Number.isFinite(severity) ? severity.toFixed(2) : "–";
}

export function shapeOf(className) {
  return SHAPES[className] || FALLBACK_SHAPE;
}

// An SVG marker: the shape says the class, the fill says the severity.
// UNCONFIRMED (status new: seen on one pass) is drawn hollow and dashed. Many are stray boxes that no later pass
// repeats: in the fleet simulator the defects shown after 3 passes are 52 % right with them and 98 % without
// (docs/fleet_sim.md), and both looked the same.
export function markerSvg(className, severity, size = 22, unconfirmed = false) {
  const colour = severityBand(severity).colour;
  const h = size / 2;
  const stroke = unconfirmed
    ? `stroke="#101828" stroke-width="1.5" stroke-dasharray="3 2" fill="${colour}" fill-opacity=".35"`
    : `stroke="#101828" stroke-width="1.5" fill="${colour}"`;
  let body;
  switch (shapeOf(className)) {
    case "circle":
      body = `<circle cx="${h}" cy="${h}" r="${h - 2}" ${stroke}/>`;
      break;
    case "triangle":
      body = `<polygon points="${h},2 ${size - 2},${size - 3} 2,${size - 3}" ${stroke}/>`;
      break;
    default:
      body = `<polygon points="${h},1 ${size - 1},${h} ${h},${size - 1} 1,${h}" ${stroke}/>`;
  }
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${size}" height="${size}" viewBox="0 0 ${size} ${size}">${body}</svg>`;
}

function first(obj, ...keys) {
  for (const key of keys) {
    if (obj && obj[key] !== undefined && obj[key] !== null) return obj[key];
  }
  return undefined;
}

// One defect from a GeoJSON feature, whatever spelling of a field the server chose.
export function defectFromFeature(feature) {
  const p = feature.properties || {};
  const [lon, lat] = feature.geometry ? feature.geometry.coordinates : [p.lon, p.lat];
  return {
    id: String(first(p, "id", "defect_id") ?? feature.id),
    className: first(p, "class", "class_name", "defect_class") || "unknown",
    status: first(p, "status") || "new",
    severity: first(p, "severity") === undefined ? null : Number(first(p, "severity")),
    firstSeen: first(p, "first_seen", "first_seen_at"),
    lastSeen: first(p, "last_seen", "last_seen_at"),
    sightings: Number(first(p, "sighting_count", "sightings_count", "sightings", "n_sightings") ?? 0),
    vehicles: Number(first(p, "vehicle_count", "vehicles_count", "n_vehicles") ?? 0),
    confidence: first(p, "confidence", "max_confidence"),
    note: typeof p.note === "string" && p.note ? p.note : null, // the newest note a manager wrote
    widthM: Number(first(p, "size_width_m") ?? NaN),
    lengthM: Number(first(p, "size_length_m") ?? NaN),
    lat,
    lon,
    // A crack's line, [[lon, lat], ...] in the API, as Leaflet's [lat, lon]; null for a point defect.
    line: Array.isArray(p.line) && p.line.length >= 2 ? p.line.map(([x, y]) => [y, x]) : null,
    props: p,
  };
}

// "0.45 x 1.20 m" (width x length, as sightings measured it on the road), or null when unknown. A crack's line
// comes first: its size alone is one piece's (the median sighting), and read "1.09 x 3.85 m" under a 71 m line.
export function sizeText(defect) {
  const w = defect.widthM, l = defect.lengthM;
  const along = defect.line ? `line ${lineLengthM(defect.line).toFixed(1)} m long` : null;
  if (!Number.isFinite(w) || !Number.isFinite(l)) return along;
  const size = `${w.toFixed(2)} x ${l.toFixed(2)} m (width x length)`;
  return along ? `${along}; pieces seen ${size}` : size;
}

// Metres along LINE ([lat, lon] points): an equirectangular step per segment, exact enough over metres.
export function lineLengthM(line) {
  const R = 6371008.8, rad = Math.PI / 180;
  let total = 0;
  for (let i = 1; i < line.length; i += 1) {
    const [lat1, lon1] = line[i - 1], [lat2, lon2] = line[i];
    const x = (lon2 - lon1) * rad * Math.cos(((lat1 + lat2) / 2) * rad), y = (lat2 - lat1) * rad;
    total += R * Math.hypot(x, y);
  }
  return total;
}

export function sightingsOf(detail) {
  const list = first(detail, "sightings") || first(detail.properties || {}, "sightings") || [];
  return Array.isArray(list) ? list : [];
}

export function historyOf(detail) {
  const list = first(detail, "history", "status_history") || first(detail.properties || {}, "history", "status_history");
  return Array.isArray(list) ? list : [];
}

export function sightingTime(s) {
  return first(s, "captured_at", "received_at", "stored_at");
}

export function sightingDevice(s) {
  return first(s, "device_id", "device", "vehicle_id");
}

export function sightingHasThumbnail(s) {
  if ("thumbnail_url" in s) return Boolean(s.thumbnail_url);
  const flag = first(s, "has_thumbnail", "thumbnail");
  return flag === undefined ? true : Boolean(flag);
}

// Vehicle ids that saw a defect: the server's per-vehicle summary when it sends one, else from the sightings.
export function vehiclesOf(detail, sightings) {
  const list = first(detail, "vehicles") || first(detail.properties || {}, "vehicles");
  if (Array.isArray(list) && list.length) return list.map((v) => (typeof v === "object" ? sightingDevice(v) : v));
  return [...new Set(sightings.map(sightingDevice).filter(Boolean))];
}

export function deviceFields(d) {
  const status = first(d, "last_status", "status_payload") || {};
  const fix = first(d, "last_fix", "fix") || first(status, "fix") || null;
  const model = first(d, "model") || first(status, "model");
  return {
    id: String(first(d, "id", "device_id")),
    name: first(d, "name") || first(d, "id", "device_id"),
    state: first(d, "state", "connection_state") || first(status, "state") || "unknown",
    lastSeen: first(d, "last_seen", "last_seen_at"),
    queueDepth: first(d, "queue_depth") ?? first(status, "queue_depth"),
    fps: first(d, "fps") ?? first(status, "fps"),
    problems: Array.isArray(d.problems) ? d.problems : [],
    healthWords: d.health && typeof d.health === "object"
      ? Object.entries(d.health).filter(([, v]) => typeof v === "string" && v !== "ok").map(([k, v]) => `${k} ${v}`)
      : [],
    lastSpeed: Number.isFinite(Number(d.last_speed_mps)) && d.last_speed_mps !== null ? Number(d.last_speed_mps)
      : null,
    model: typeof model === "object" && model ? [model.name, model.version].filter(Boolean).join(" ") : model,
    // (0, 0) is a receiver's placeholder, not a place: one such van zoomed the first view out to the world.
    fix: fix && Number.isFinite(Number(fix.lat)) && Number.isFinite(Number(fix.lon))
      && (Number(fix.lat) !== 0 || Number(fix.lon) !== 0) ? { lat: Number(fix.lat), lon: Number(fix.lon) } : null,
  };
}

export function formatTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toISOString().replace("T", " ").slice(0, 16) + " UTC";
}

export function escapeHtml(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => (
    { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
