// The Leaflet map: basemap, clustered defect markers, the coverage layer and the vehicles' last fixes.
/* global L */
import { markerSvg, severityBand, SEVERITY_BANDS, UNKNOWN_SEVERITY, OPEN_STATUSES, escapeHtml } from "./model.js";

const DEFAULT_TILES = "https://{s}.tile.openstreetmap.org/{z}/{x}/{y}.png";
const MAX_ZOOM = 22;
const LINES_MIN_ZOOM = 16; // 1.6 m a pixel at 48° latitude
const FOCUS_WAIT_MS = 3000; // the longest markercluster's zoom to a marker may take before defects redraw anyway
const DEFAULT_ATTRIBUTION = '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors';

export class DefectMap {
  constructor(element, config, onSelect) {
    this.onSelect = onSelect;
    // Zoom goes past the basemap's deepest tiles (scaled up) so that a metre-long crack's line shows beside its
    // marker: at zoom 19 it is 5 px, under a 22 px icon.
    this.map = L.map(element, { zoomControl: true, zoomSnap: 0.25, maxZoom: MAX_ZOOM }).setView([48.137, 11.575], 13);
    this.addBasemap(config);
    this.clusters = L.markerClusterGroup({
      maxClusterRadius: 45,
      showCoverageOnHover: false,
      chunkedLoading: true, // a big fleet's thousands of markers go in without freezing the page
      chunkProgress: (done, total) => { if (done === total) this.addingDone(); },
      iconCreateFunction: (cluster) => this.clusterIcon(cluster),
    });
    this.adding = false; // markercluster is still adding the last call's markers, chunk by chunk
    this.focusing = false; // markercluster is zooming to show a picked marker (zoomToShowLayer)
    this.pending = null; // the defects asked for meanwhile
    // The roads driven: a fleet's day is tens of thousands of lines, one canvas rather than as many SVG elements.
    this.coverage = L.geoJSON(null, { renderer: L.canvas({ padding: 0.3 }),
      style: { color: "#1f6feb", weight: 4, opacity: 0.45 }, interactive: false,
      onEachFeature: (feature, layer) => this.coverageLines.set(feature.id, layer) });
    this.coverageLines = new Map(); // coverage id -> its line on the map
    // Vehicles above the defects' markers and clusters (under them, 5 of 7 vans could not be seen).
    this.map.createPane("vehicles").style.zIndex = 640;
    this.devices = L.layerGroup();
    this.lines = L.layerGroup(); // cracks: the line along each, under its marker
    this.coverage.addTo(this.map);
    // A crack is metres long: below LINES_MIN_ZOOM its line is a pixel or two under its marker, and a city's
    // 30,000 of them as SVG paths made every pan and zoom take a second.
    this.map.on("zoomend", () => {
      this.map.getContainer().dataset.zoom = this.map.getZoom(); // for scripts and tests: what the view shows
      this.showLines();
    });
    this.showLines();
    this.clusters.addTo(this.map);
    this.devices.addTo(this.map);
    this.markers = new Map(); // defect id -> {key, marker, line}
    this.fitted = false;
  }

  // Tiles are optional: when the tile server is unreachable (or tile_url is empty) the markers still draw
  // on a plain background.
  addBasemap(config) {
    const url = config.tile_url === undefined ? DEFAULT_TILES : config.tile_url;
    if (!url) return;
    const layer = L.tileLayer(url, {
      maxNativeZoom: config.max_zoom || 19,
      maxZoom: MAX_ZOOM,
      attribution: config.tile_attribution || DEFAULT_ATTRIBUTION,
    });
    let failures = 0;
    layer.on("tileerror", () => {
      failures += 1;
      if (failures === 1) console.warn("basemap tiles unreachable; markers are drawn without a basemap");
    });
    layer.addTo(this.map);
  }

  clusterIcon(cluster) {
    let worst = 0; // a loop: spreading a city's 100k+ children into Math.max overflows the call stack
    for (const m of cluster.getAllChildMarkers()) worst = Math.max(worst, m.options.severity || 0);
    const colour = severityBand(worst).colour;
    const n = cluster.getChildCount();
    const size = n < 10 ? 30 : n < 100 ? 36 : 44;
    return L.divIcon({
      html: `<div style="background:${colour};width:${size}px;height:${size}px;border-radius:50%;display:flex;
        align-items:center;justify-content:center;font-weight:700;color:#101828;border:2px solid #fff;
        box-shadow:0 1px 4px rgba(0,0,0,.4)">${n}</div>`,
      className: "defect-cluster",
      iconSize: [size, size],
    });
  }

  // The map follows DEFECTS: only the defects that are new, changed or gone are touched, so a refresh of a city's
  // 100k defects redraws what changed. A call while markercluster still adds the last call's markers waits for
  // it: its chunks cannot be cancelled, and a clear in between let them add stale markers back (with 100k
  // defects every 30 s refresh emptied the map, and a filter changed twice showed defects it hides).
  showDefects(defects) {
    if (this.adding || this.focusing) {
      this.pending = defects;
      this.markBusy();
      return;
    }
    const wanted = new Map();
    for (const d of defects) if (Number.isFinite(d.lat) && Number.isFinite(d.lon)) wanted.set(d.id, d);
    const gone = [];
    for (const [id, entry] of this.markers) {
      const d = wanted.get(id);
      if (d && markerKey(d) === entry.key) continue;
      gone.push(entry.marker);
      if (entry.line) this.lines.removeLayer(entry.line);
      this.markers.delete(id);
    }
    this.clusters.removeLayers(gone);
    const added = [];
    for (const d of wanted.values()) {
      if (this.markers.has(d.id)) continue;
      const entry = this.makeMarker(d);
      this.markers.set(d.id, entry);
      if (entry.line) this.lines.addLayer(entry.line);
      added.push(entry.marker);
    }
    this.adding = true;
    this.markBusy();
    this.clusters.addLayers(added); // chunkProgress calls addingDone after the last chunk (at once when small)
  }

  addingDone() {
    this.adding = false;
    this.showPending();
    this.markBusy();
  }

  // Whether the map is still drawing (markers added in chunks, or waiting to be): for whoever must know when the
  // map shows what the filters say (the page's tests, on a machine 20 times slower).
  markBusy() {
    document.body.dataset.mapBusy = this.adding || this.pending ? "1" : "0";
  }

  showPending() {
    if (!this.pending || this.adding || this.focusing) return;
    const next = this.pending;
    this.pending = null;
    this.showDefects(next);
  }

  makeMarker(d) {
    const closed = !OPEN_STATUSES.includes(d.status);
    const unconfirmed = d.status === "new";
    let line = null;
    if (d.line) {
      line = L.polyline(d.line, { color: severityBand(d.severity).colour, weight: 5, opacity: closed ? 0.4 : 0.9,
        dashArray: "8 4", className: `defect-line defect-line-${d.className}` });
      line.on("click", () => this.onSelect(d.id, false));
    }
    const icon = L.divIcon({
      html: markerSvg(d.className, d.severity, 22, unconfirmed),
      className: `defect-icon defect-${d.className}${closed ? " closed" : ""}${unconfirmed ? " unconfirmed" : ""}`,
      iconSize: [22, 22],
      iconAnchor: [11, 11],
    });
    const marker = L.marker([d.lat, d.lon], { icon, severity: d.severity, title: `${d.className} ${d.id}` });
    // Tests and the list find a marker by its defect id.
    marker.on("add", () => {
      marker.getElement()?.setAttribute("data-defect-id", d.id);
      marker.getElement()?.classList.toggle("selected", d.id === this.selectedId);
    });
    marker.on("click", () => this.onSelect(d.id, false)); // already in view: keep the map where it is
    return { key: markerKey(d), marker, line };
  }

  showLines() {
    const wanted = this.map.getZoom() >= LINES_MIN_ZOOM;
    if (wanted !== this.map.hasLayer(this.lines)) {
      if (wanted) this.lines.addTo(this.map);
      else this.map.removeLayer(this.lines);
    }
  }

  // Once, after the first load: everything there is to see (defects, roads driven, vehicles) in view.
  fitOnce() {
    if (!this.fitted) this.fitted = this.fitAll();
  }

  fitAll() {
    const bounds = L.latLngBounds([]);
    for (const layer of [this.clusters, this.coverage, this.devices, this.lines]) {
      if (layer.getLayers().length) bounds.extend(layer.getBounds ? layer.getBounds() : L.featureGroup(layer.getLayers()).getBounds());
    }
    if (!bounds.isValid()) return false;
    this.map.fitBounds(bounds.pad(0.08), { maxZoom: 17 });
    return true;
  }

  // The picked defect's marker stands out (its element exists only while it is not in a cluster).
  highlight(id) {
    this.selectedId = id;
    for (const [markerId, entry] of this.markers) entry.marker.getElement()?.classList.toggle("selected", markerId === id);
  }

  // To the defect at street level (zoom 18 at least), then out of its cluster when it is still in one. Asking
  // markercluster alone to show it did nothing while a city's markers were still going in.
  focus(defect) {
    const marker = this.markers.get(defect.id)?.marker;
    if (!marker) return;
    this.fitted = true; // a defect picked during the first load stays in view: the first fit does not undo it
    this.map.once("moveend", () => {
      if (this.adding || !this.clusters.hasLayer(marker) || marker.getElement()) return;
      // Until it is shown, removing the marker (a refresh that finds it merged away) broke markercluster's
      // pending step ("'_leaflet_id' in undefined"): defects wait as they do for markers still going in.
      this.focusing = true;
      const done = () => {
        if (!this.focusing) return;
        this.focusing = false;
        this.showPending();
      };
      this.clusters.zoomToShowLayer(marker, done);
      setTimeout(done, FOCUS_WAIT_MS); // its callback never comes when the marker went meanwhile
    });
    this.map.setView(marker.getLatLng(), Math.max(this.map.getZoom(), 18));
  }

  // LINES: coverage features (an iterable); only those not on the map yet are drawn, those no longer wanted go.
  showCoverage(lines, visible) {
    const wanted = new Map();
    if (visible && lines) for (const feature of lines) wanted.set(feature.id, feature);
    for (const [id, layer] of this.coverageLines) {
      if (wanted.has(id)) continue;
      this.coverage.removeLayer(layer);
      this.coverageLines.delete(id);
    }
    for (const [id, feature] of wanted) if (!this.coverageLines.has(id)) this.coverage.addData(feature);
    document.body.dataset.coverageLines = String(this.coverageLines.size);
  }

  showDevices(devices) {
    this.devices.clearLayers();
    for (const d of devices) {
      if (!d.fix) continue;
      // A vehicle with a problem is drawn in its own colour (not a severity's) and its tooltip, wrapped to stay on
      // the map, says what (every van was the same black dot).
      const trouble = d.problems.length ? `<br>${d.problems.map(escapeHtml).join("<br>")}` : "";
      const marker = L.circleMarker([d.fix.lat, d.fix.lon], {
        pane: "vehicles", radius: 7, color: "#fff", weight: 2, fillOpacity: 0.95,
        fillColor: d.problems.length ? VEHICLE_PROBLEM : VEHICLE,
      }).bindTooltip(`<b>${escapeHtml(d.name)}</b> · ${escapeHtml(d.state)}${trouble}`,
        { className: "vehicle-tip", direction: "top" });
      marker.deviceId = d.id;
      this.devices.addLayer(marker);
    }
  }

  focusDevice(device) {
    this.fitted = true;
    if (device.fix) this.map.setView([device.fix.lat, device.fix.lon], Math.max(this.map.getZoom(), 16));
    this.devices.eachLayer((layer) => {  // one at a time: each click left the last one open
      if (layer.deviceId === device.id) layer.openTooltip();
      else layer.closeTooltip();
    });
  }
}

// What a defect's marker and line are drawn from: a defect whose key changed is drawn anew.
function markerKey(d) {
  return `${d.status}|${d.severity}|${d.className}|${d.lat}|${d.lon}|${d.line ? JSON.stringify(d.line) : ""}`;
}

const VEHICLE = "#101828";
const VEHICLE_PROBLEM = "#9e3ff0"; // not --sev-high: a red van beside red clusters could not be told apart

function vehicle(fill, label) {
  return `<span><svg width="14" height="14"><circle cx="7" cy="7" r="5.5" fill="${fill}" stroke="#fff"
    stroke-width="1.5"/></svg>${label}</span>`;
}

export function legendHtml() {
  const bands = [...SEVERITY_BANDS, UNKNOWN_SEVERITY].map((b) =>
    `<span><svg width="12" height="12"><circle cx="6" cy="6" r="5" fill="${b.colour}" stroke="#101828"/></svg>${b.name}</span>`);
  const shapes = [["pothole", "pothole"], ["crack", "crack"], ["other", "other"]].map(([cls, label]) =>
    `<span>${markerSvg(cls, 0.5, 13)}${label}</span>`);
  return `${bands.join("")}<br>${shapes.join("")}<span><svg width="18" height="8"><line x1="0" y1="4" x2="18" y2="4"
    stroke="#101828" stroke-width="3" stroke-dasharray="5 2"/></svg>crack line</span><span><svg width="18" height="8"><line x1="0" y1="4" x2="18" y2="4"
    stroke="#1f6feb" stroke-width="4" opacity=".45"/></svg>driven</span><br><span>${markerSvg("pothole", 0.5, 13, true)
    }new: seen on one pass, not yet confirmed</span><br>${vehicle(VEHICLE, "vehicle")}${
    vehicle(VEHICLE_PROBLEM, "vehicle with a problem")}`;
}
