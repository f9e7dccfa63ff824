// Entry point: sign in with a token, then load defects, coverage and devices and keep the views in step.
import {
  AuthError, adoptTokenFromUrl, clearToken, dashboardConfig, describe, download, getJson, getToken, query,
  serverHealth, setToken,
} from "./api.js";
import { DefectMap, legendHtml } from "./map.js";
import { applyFilters, fillClassOptions, readFilters, renderCounts, renderList } from "./filters.js";
import { DefectPanel } from "./panel.js";
import { ROWS_SHOWN, renderDevices } from "./devices.js";
import { defectFromFeature, deviceFields } from "./model.js";

const REFRESH_MS = 30000; // from the end of one load to the start of the next: a slow load is never overlapped
// With the Devices tab hidden the vehicles on the map are refreshed less often: at 10,000 vehicles the list is
// ~1 s of the API's time and 7 MB per tab, and 20 tabs opened together got 503s.
const DEVICES_HIDDEN_MS = 120000;
const MAP_ALL_VEHICLES_UP_TO = 500; // beyond, the map shows only the vehicles with a problem unless asked
// A refresh asks for the defects written, and the roads driven stored, since the last answer (its sync_token).
// Every FULL_RELOAD_MS the page loads everything again: what changes cannot say (coverage that retention deleted)
// goes then.
const FULL_RELOAD_MS = 10 * 60000;
const PAGE_SIZE = 5000;
const MAX_PAGES = 200;
const DAY_MS = 24 * 3600 * 1000;
const $ = (id) => document.getElementById(id);

const SIGNED_OUT_KEY = "roadmon.signedOut";

const state = {
  me: null, defects: [], devices: [], selected: null, map: null, panel: null, timer: null,
  seesVehicles: true, // false for a map token: devices and roads driven are not its to read
  failure: null, // the last error of the current load; the status line keeps it until a load succeeds
  loadedAt: null, // when every part last loaded: what the page shows is from then
  loading: null, // the load in progress: a refresh or a click on Refresh meanwhile joins it
  cut: [], // what the last load could not load whole (the pages ran out): the status line says so
  notice: null, // news of this load for the status line (a defect whose panel is open was merged)
  coverageRun: 0, // the newest coverage load: an older one that ends later does not draw over it
  syncToken: null, // of the defects loaded: the next refresh asks what was written since
  coverage: null, // the roads driven on the map: {since, until, syncToken, loadedAt, lines: Map id -> feature}
  fullAt: -Infinity, // when every defect was last loaded (performance.now())
  devicesAt: -Infinity, // when the devices were last loaded (performance.now())
  deviceRows: ROWS_SHOWN, // how many the Devices tab draws ("show more" adds)
  focusedDevice: null, // the vehicle last picked in the list: on the map whatever the map's choice
};

function setStatus(text, isError = false) {
  const line = $("status-line");
  line.textContent = text || "";
  line.classList.toggle("error", isError);
}

// UTC, as every other time on the page.
function clock(date) {
  return `${date.toISOString().slice(11, 19)} UTC`;
}

function showLogin(message = "") {
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("token").focus();
}

// A session that ended while the page was open (token expired or revoked) says so on the login form.
function endedNotice() {
  const ended = sessionStorage.getItem(SIGNED_OUT_KEY);
  sessionStorage.removeItem(SIGNED_OUT_KEY);
  return ended ? "Your session ended: the token expired or was revoked. Sign in again." : "";
}

async function signIn() {
  try {
    state.me = await getJson("me");
  } catch (err) {
    clearToken();
    showLogin(err instanceof AuthError ? "That token was not accepted." : `Server unreachable: ${err.message}`);
    return;
  }
  $("login").hidden = true;
  $("app").hidden = false;
  await startApp();
}

async function startApp() {
  $("whoami").textContent = `${state.me.name} (${state.me.role})`;
  // A map token reads the defects without the vehicles (who drove where, when): no Devices tab, no roads layer,
  // and nothing asked that the server would refuse (a 403 ends the session).
  state.seesVehicles = state.me.role !== "map";
  if (!state.seesVehicles) {
    $("tab-devices").hidden = true;
    $("f-coverage").checked = false;
    $("f-coverage").closest("label").hidden = true;
  }
  const config = await dashboardConfig();
  state.map = new DefectMap($("map"), config, selectDefect);
  $("legend").innerHTML = legendHtml();
  state.panel = new DefectPanel($("panel"), $("panel-body"), state.me.role, onStatusChanged,
    () => state.map.map.invalidateSize(), endSession);
  $("panel-close").addEventListener("click", () => {
    state.panel.close();
    state.selected = null;
    state.map.highlight(null);
    redraw();
  });
  // Coverage depends on the dates and its checkbox only: a class or status change does not reload a day of lines.
  const coverageInputs = new Set(["f-since", "f-until", "f-coverage"]);
  $("filters").addEventListener("change", (event) => {
    redraw();
    if (coverageInputs.has(event.target.id)) loadCoverage();
  });
  $("filters").addEventListener("reset", () => setTimeout(() => { redraw(); loadCoverage(); }));
  $("refresh").addEventListener("click", () => loadAll());
  $("device-search").addEventListener("input", () => { state.deviceRows = ROWS_SHOWN; drawDevices(); });
  $("device-show").addEventListener("change", () => { state.deviceRows = ROWS_SHOWN; drawDevices(); });
  $("map-vehicles").addEventListener("change", () => {
    $("map-vehicles").dataset.chosen = "1";
    state.focusedDevice = null; // a choice made now is what the map shows, the last pick included
    drawVehicles();
  });
  $("fit-all").addEventListener("click", () => state.map.fitAll());
  $("export-csv").addEventListener("click", () => exportShown("csv"));
  $("export-geojson").addEventListener("click", () => exportShown("geojson"));
  document.querySelectorAll(".tab").forEach((tab) => tab.addEventListener("click", () => showView(tab.dataset.view)));
  await loadAll();
  scheduleRefresh();
}

function scheduleRefresh() {
  // +-10 %: tabs opened together (a wall of screens) drift apart instead of asking the server all at once.
  state.timer = setTimeout(async () => {
    await loadAll(true);
    scheduleRefresh();
  }, REFRESH_MS * (0.9 + 0.2 * Math.random()));
}

function showView(view) {
  document.querySelectorAll(".tab").forEach((tab) => tab.classList.toggle("active", tab.dataset.view === view));
  $("view-defects").hidden = view !== "defects";
  $("view-devices").hidden = view !== "devices";
  $("app").classList.toggle("devices-view", view === "devices");
  state.map.map.invalidateSize(); // the side's width changed: Leaflet measures its box again
  if (view === "devices" && performance.now() - state.devicesAt > REFRESH_MS) loadDevices(true);
}

function endSession() {
  clearTimeout(state.timer);
  clearToken();
  sessionStorage.setItem(SIGNED_OUT_KEY, "1");
  location.reload(); // drop every piece of data from the page
}

async function guarded(work) {
  try {
    return await work();
  } catch (err) {
    if (err instanceof AuthError) {
      endSession();
      return undefined;
    }
    state.failure = err;
    setStatus(describe(err), true);
    console.error(err);
    return undefined;
  }
}

function loadAll(quiet = false) {
  if (!state.loading) {
    document.body.dataset.loading = "1";
    state.loading = loadAllOnce(quiet).finally(() => {
      state.loading = null;
      document.body.dataset.loading = "0";
    });
  }
  return state.loading;
}

async function loadAllOnce(quiet) {
  if (!quiet) setStatus("loading…");
  state.failure = null;
  state.cut = [];
  const [health] = await Promise.all([serverHealth(), loadDefects(), loadDevices(!quiet)]);
  await loadCoverage(); // its default period follows the defects
  state.map.fitOnce();
  if (state.failure) {
    // Old data must not pass for current: say since when it is stale, until a load succeeds again.
    const since = state.loadedAt ? `showing data from ${clock(state.loadedAt)}` : "no data loaded";
    setStatus(`${describe(state.failure)}; ${since}`, true);
    return;
  }
  state.loadedAt = new Date();
  // An answer cut short must not pass for the whole map (a server with a small api.max_page_size, years of
  // coverage): say what is missing.
  const cut = state.cut.length ? `; ${state.cut.join("; ")}` : "";
  const notice = state.notice ? `; ${state.notice}` : "";
  state.notice = null;
  // With the broker down (or ingest stalled) every van still read "online, no problems": what the server last
  // heard is not what the fleet does now.
  const degraded = health && health.status === "degraded" ? `; server degraded (${Object.entries(health)
    .filter(([k, v]) => k !== "status" && v && v !== "ok").map(([k, v]) => `${k}: ${v}`).join(", ")
  }): vehicles' states are as last heard` : "";
  setStatus(`updated ${clock(state.loadedAt)}${cut}${notice}${degraded}`, Boolean(cut) || Boolean(degraded));
}

// A city's year is 100,000 defects (~50 MB of GeoJSON): a refresh loads only what changed since the last load,
// and every defect only at sign-in, every FULL_RELOAD_MS, or when the changes cannot be trusted (cut short).
async function loadDefects() {
  await guarded(async () => {
    const full = !state.syncToken || performance.now() - state.fullAt > FULL_RELOAD_MS;
    if (!full && await loadChanges()) return;
    const started = performance.now();
    const { features, more, token } = await allPages("defects", { limit: PAGE_SIZE });
    if (more) state.cut.push(`only the first ${features.length} defects loaded: the server has more than ${MAX_PAGES} pages`);
    state.defects = features.map(defectFromFeature);
    state.syncToken = more ? null : token; // a cut list is no base for changes
    state.fullAt = started;
    fillClassOptions($("f-class"), state.defects);
    redraw();
  });
}

// The defects changed since the last load, put in place of their old selves; those merged into another leave.
// False when the changes are too many to page through, or the server asks for a whole load (410: a restore
// or a failover since the last answer): the caller loads everything instead.
async function loadChanges() {
  const ask = { limit: PAGE_SIZE, since_token: state.syncToken };
  let answer;
  try {
    answer = await allPages("defects", ask);
  } catch (err) {
    if (reloadWhole(err)) return false;
    throw err;
  }
  const { features, more, first, token } = answer;
  if (more) return false;
  state.syncToken = token;
  const gone = new Set((first.removed || []).map(String));
  if (!features.length && !gone.size) return true; // a quiet fleet: nothing to redraw
  const changed = new Map();
  for (const feature of features) {
    const defect = defectFromFeature(feature);
    if (!gone.has(defect.id)) changed.set(defect.id, defect); // merged after its row was read: gone
  }
  const next = [];
  for (const d of state.defects) {
    if (gone.has(d.id)) continue;
    const fresh = changed.get(d.id);
    next.push(fresh || d);
    changed.delete(d.id);
  }
  for (const d of changed.values()) next.push(d); // new since the last load
  state.defects = next;
  const open = state.selected && gone.has(state.selected) ? state.selected : null;
  fillClassOptions($("f-class"), state.defects);
  redraw();
  if (open) await followMerge(open);
  return true;
}

// A defect merged into another while its panel was open: the panel follows it to the one that remains (the API
// answers the old id with a redirect there). One that only left the filters stays closed, as any filtered away.
async function followMerge(id) {
  const detail = await getJson(`defects/${id}`);
  const kept = String(detail.properties?.id ?? detail.id);
  if (kept === id || !state.defects.some((d) => d.id === kept)) return;
  selectDefect(kept, false);
  state.notice = `defect ${id} was merged into defect ${kept}: the same defect, seen twice before its position settled`;
  if (!state.loading) { // a manager's own change, not a load: no load will say it
    setStatus(state.notice);
    state.notice = null;
  }
}

// Defects and coverage come in pages by cursor; the map wants all of them, up to MAX_PAGES pages. `more`: the
// pages ran out before the data did; `first`: the first page's answer (removed); `token`: the smallest of the
// pages' sync_tokens (each page may be read from another database, a read replica behind the primary), or null
// when a page had none (an API server of an older version, during a rolling upgrade: the other pages' tokens
// would skip what was written before that page was read).
async function allPages(path, params, superseded = () => false) {
  const features = [];
  let cursor = null;
  let first = null;
  let token = null;
  let untokened = false;
  const done = (more) => ({ features, more, first, token: untokened ? null : token });
  for (let page = 0; page < MAX_PAGES; page += 1) {
    if (superseded()) return done(false); // a newer load wants other pages: stop these
    const collection = await getJson(`${path}${query({ ...params, cursor })}`);
    first = first || collection;
    untokened = untokened || !collection.sync_token;
    token = smallerToken(token, collection.sync_token);
    for (const feature of collection.features || []) features.push(feature); // no spread: a page can be 100k
    cursor = collection.next_cursor;
    if (cursor === null || cursor === undefined) return done(false);
  }
  return done(true);
}

// A token is <cluster>.<timeline>.<table>.<transaction id>; the ids, 64-bit, compare as BigInt (a Number loses
// digits past 2^53).
function smallerToken(a, b) {
  if (!a || !b) return a || b || null;
  const id = (token) => BigInt(token.split(".").pop());
  return id(b) < id(a) ? b : a;
}

// What the server answers a token from another history of its database (a restore, a failover): load whole. So
// too when the answer is a 400 about since_token: an API server of an older version, met during a rolling
// upgrade, does not know the parameter (and a token it cannot read is no base for changes either).
function reloadWhole(err) {
  return Boolean(err) && (err.status === 410 || (err.status === 400 && /since_token/.test(err.message)));
}

async function loadDevices(now = false) {
  if (!state.seesVehicles) return;
  if (!now && $("view-devices").hidden && performance.now() - state.devicesAt < DEVICES_HIDDEN_MS) return;
  await guarded(async () => {
    const body = await getJson("devices");
    const list = Array.isArray(body) ? body : body.devices || body.items || [];
    state.devices = list.map(deviceFields);
    state.devicesAt = performance.now();
    const mapChoice = $("map-vehicles");
    if (!mapChoice.dataset.chosen) mapChoice.value = state.devices.length > MAP_ALL_VEHICLES_UP_TO ? "problems" : "all";
    drawDevices();
    drawVehicles();
  });
}

function drawDevices() {
  renderDevices($("device-table").tBodies[0], state.devices, focusVehicle, $("device-summary"), {
    query: $("device-search").value, show: $("device-show").value, limit: state.deviceRows,
    onMore: () => { state.deviceRows += ROWS_SHOWN; drawDevices(); },
  });
}

// 10,000 vehicle dots buried every defect: a large fleet's map shows the vehicles with a problem, or as chosen,
// and the one last picked in the list.
function drawVehicles() {
  const choice = $("map-vehicles").value;
  const wanted = (d) => d.id === state.focusedDevice
    || (choice === "all" || (choice === "problems" && d.problems.length > 0));
  state.map.showDevices(state.devices.filter(wanted));
}

function focusVehicle(device) {
  if (state.focusedDevice !== device.id) {
    state.focusedDevice = device.id;
    drawVehicles();
  }
  state.map.focusDevice(device);
}

async function loadCoverage() {
  const filters = readFilters($("filters"));
  const visible = state.seesVehicles && $("f-coverage").checked; // Clear filters ticks the box again
  if (!visible) {
    state.coverage = null;
    state.map.showCoverage(null, false);
    return;
  }
  state.coverageRun += 1;
  const run = state.coverageRun;
  await guarded(async () => {
    const params = {
      since: filters.since ? `${filters.since}T00:00:00Z`
        : defaultCoverageSince(filters.until ? Date.parse(`${filters.until}T23:59:59Z`) : Infinity),
      until: filters.until ? `${filters.until}T23:59:59Z` : undefined,
    };
    // A fleet's day is tens of thousands of lines: when the period only moved on (its default start follows the
    // newest sighting), ask for the lines stored since the last load and drop those that ended before it.
    const previous = state.coverage;
    const changes = Boolean(previous && previous.syncToken && previous.until === params.until
      && Date.parse(params.since) >= Date.parse(previous.since)
      && performance.now() - previous.loadedAt < FULL_RELOAD_MS);
    const ask = changes ? { ...params, since_token: previous.syncToken } : params;
    if (!state.loading) setStatus("loading the roads driven…");
    let answer;
    try {
      answer = await allPages("coverage", ask, () => run !== state.coverageRun);
    } catch (err) {
      if (!changes || !reloadWhole(err)) throw err;
      state.coverage = null; // another history of the database: every line again
      await loadCoverage();
      return;
    }
    const { features, more, token } = answer;
    if (run !== state.coverageRun) return; // the filters changed while it loaded: the newer load draws
    if (!state.loading && !more) setStatus(state.loadedAt ? `updated ${clock(state.loadedAt)}` : "");
    if (more) {
      state.cut.push(`only the first ${features.length} driven lines drawn: narrow the dates`);
      if (!state.loading) setStatus(state.cut.at(-1), true); // a filter's reload: no load will say it
    }
    const lines = changes ? previous.lines : new Map();
    for (const feature of features) lines.set(feature.id, feature);
    const start = Date.parse(params.since);
    if (changes) for (const [id, f] of lines) if (Date.parse(f.properties.ended_at) < start) lines.delete(id);
    state.coverage = { ...params, syncToken: more ? null : token, lines,
      loadedAt: changes ? previous.loadedAt : performance.now() };
    state.map.showCoverage(lines.values(), true);
  });
}

// Without a date range: from a day before the latest sighting on, so that a fleet that did not drive today
// still shows its roads, and a long history does not load years of lines. Never from later than a day before
// now: one phone whose clock ran hours ahead (the server takes up to ingest.future_tolerance_s) hid today's
// drives from every manager's map.
// The day before the newest sighting, now, or the chosen "until", whichever is first: with only "until" set to a
// past day, the window started after it and the roads layer was empty.
function defaultCoverageSince(until) {
  let latest = -Infinity; // a loop: spreading 120k+ values into Math.max overflows the call stack
  for (const d of state.defects) latest = Math.max(latest, Date.parse(d.lastSeen) || -Infinity);
  const end = Math.min(Number.isFinite(latest) ? latest : Date.now(), Date.now(), until);
  return new Date(end - DAY_MS).toISOString();
}

function redraw() {
  const shown = applyFilters(state.defects, readFilters($("filters")));
  if (state.selected && !shown.some((d) => d.id === state.selected)) { // filtered away: its panel goes too
    state.panel.close();
    state.selected = null;
    state.map.highlight(null);
  }
  state.map.showDefects(shown);
  renderCounts($("counts"), shown, state.defects.length);
  renderList($("defect-list"), shown, state.selected, selectDefect);
  document.body.dataset.shownDefects = String(shown.length);
}

function selectDefect(id, focusMap = true) {
  const defect = state.defects.find((d) => d.id === id);
  if (!defect) return;
  state.selected = id;
  state.map.highlight(id);
  const items = [...document.querySelectorAll("#defect-list li[data-defect-id]")];
  if (items.some((li) => li.dataset.defectId === id)) {
    items.forEach((li) => li.classList.toggle("selected", li.dataset.defectId === id));
  } else { // the list holds the worst LIST_LIMIT: one picked on the map from beyond them joins it, marked
    renderList($("defect-list"), applyFilters(state.defects, readFilters($("filters"))), id, selectDefect);
  }
  guarded(() => state.panel.open(defect));
  if (focusMap) {
    state.map.focus(defect);
    // A phone stacks the map above a long list: bring the map, where the defect now is, on screen.
    if (window.matchMedia("(max-width: 760px)").matches) $("map").scrollIntoView({ block: "start" });
  }
}

// The export holds what the filters show, from the API (its CSV columns are documented for other tools).
function exportShown(kind) {
  const f = readFilters($("filters"));
  const params = {
    class: f.className, status: f.status, min_severity: f.minSeverity || undefined,
    since: f.since ? `${f.since}T00:00:00Z` : undefined, until: f.until ? `${f.until}T23:59:59.999Z` : undefined,
  };
  guarded(() => download(`defects.${kind}${query(params)}`, `defects.${kind}`));
}

// A defect the new status takes out of the filters (repaired, with "open" shown) leaves the list and the panel,
// as any filtered-away defect does; the status line says where it went.
// REFUSED: why a change was not made (412: changed meanwhile), said where the manager will see it.
async function onStatusChanged(id, refused = null) {
  await loadDefects();
  const shown = applyFilters(state.defects, readFilters($("filters")));
  if (shown.some((d) => d.id === id)) {
    selectDefect(id);
    return;
  }
  state.panel.notice = null;  // not for whichever defect opens next
  const defect = state.defects.find((d) => d.id === id);
  const where = defect ? `defect ${id} is now ${defect.status}: the filters hide it (Clear filters shows it)`
    : `defect ${id} is no longer on the map (merged into another, or gone)`;
  setStatus(refused ? `${refused}; ${where}` : where, Boolean(refused));
}

function boot() {
  adoptTokenFromUrl();
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setToken($("token").value.trim());
    $("token").value = "";
    signIn();
  });
  $("logout").addEventListener("click", () => { clearToken(); location.reload(); });
  // A link with another token pasted into this tab changes only the fragment, which loads nothing: sign in
  // with it (the manager's link over the viewer's kept the viewer signed in, the token left in the address bar).
  window.addEventListener("hashchange", () => {
    if (!/(?:^|[#&])token=/.test(location.hash)) return;
    adoptTokenFromUrl();
    location.reload();
  });
  if (getToken()) signIn();
  else showLogin(endedNotice());
}

boot();
