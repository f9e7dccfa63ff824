// The defect panel: thumbnails, sightings timeline, vehicles, status history and, for managers, the workflow.
import { AuthError, describe, getJsonTagged, patchJson, imageUrl } from "./api.js";
import {
  escapeHtml, formatTime, historyOf, sightingsOf, sightingTime, sightingDevice, sightingHasThumbnail,
  WORKFLOW_STATUSES, MANAGER_ROLES, severityBand, severityText, sizeText, vehiclesOf,
} from "./model.js";

const MAX_THUMBNAILS = 6;

function historyItem(h) {
  const from = h.from_status ?? h.from ?? h.old_status;
  const to = h.to_status ?? h.status ?? h.to ?? h.new_status;
  const by = h.actor ?? h.by;
  return `<li>${formatTime(h.at ?? h.changed_at)} · ${from ? `${escapeHtml(from)} → ` : ""}<b>${escapeHtml(to)}</b>
    ${by ? ` by ${escapeHtml(by)}` : ""}${h.note ? ` — ${escapeHtml(h.note)}` : ""}</li>`;
}

export class DefectPanel {
  // onAuthLost: the token stopped working (expired, revoked): the page signs out, as for every other request.
  constructor(root, body, role, onChanged, onResize, onAuthLost) {
    this.onResize = onResize;
    this.onAuthLost = onAuthLost;
    this.root = root;
    this.body = body;
    this.role = role;
    this.onChanged = onChanged;
    this.current = null;
    this.notice = null; // why the last change was refused: {id, text, note}, shown when that defect renders
    this.objectUrls = [];
  }

  close() {
    this.root.hidden = true;
    this.onResize();
    this.current = null;
    this.releaseThumbnails();
  }

  releaseThumbnails() {
    this.objectUrls.forEach((url) => URL.revokeObjectURL(url));
    this.objectUrls = [];
  }

  async open(defect) {
    this.current = defect.id;
    const wasHidden = this.root.hidden;
    this.root.hidden = false;
    if (wasHidden) this.onResize();
    this.body.innerHTML = `<h2>${escapeHtml(defect.className)}</h2><p class="hint">loading…</p>`;
    let answer;
    try {
      answer = await getJsonTagged(`defects/${encodeURIComponent(defect.id)}`);
    } catch (err) {
      if (err instanceof AuthError) return this.onAuthLost();
      if (this.current !== defect.id) return; // another defect was picked meanwhile: its panel, not this error
      this.body.innerHTML = `<h2>${escapeHtml(defect.className)}</h2><p class="error">${escapeHtml(describe(err))}</p>`;
      return;
    }
    // Another defect picked meanwhile: this slow answer's version must not become the one the panel sends (its
    // change would be refused as "changed since", or worse, carry another defect's tag).
    if (this.current !== defect.id) return;
    this.etag = answer.etag;
    this.render(defect, answer.body);
  }

  render(defect, detail) {
    this.releaseThumbnails();
    const sightings = [...sightingsOf(detail)].sort((a, b) => Date.parse(sightingTime(b)) - Date.parse(sightingTime(a)));
    const vehicles = vehiclesOf(detail, sightings);
    const history = historyOf(detail);
    const band = severityBand(defect.severity);
    this.body.innerHTML = `
      <h2 id="panel-title">${escapeHtml(defect.className)}
        <span class="badge badge-${escapeHtml(defect.status)}" id="panel-status">${escapeHtml(defect.status)}</span></h2>
      <dl>
        <dt>Severity</dt><dd>${severityText(defect.severity)} (${band.name})</dd>
        <dt>Position</dt><dd>${defect.lat.toFixed(6)}, ${defect.lon.toFixed(6)}</dd>
        ${sizeText(defect) ? `<dt>Size</dt><dd id="panel-size">${sizeText(defect)}</dd>` : ""}
        <dt>First seen</dt><dd>${formatTime(defect.firstSeen)}</dd>
        <dt>Last seen</dt><dd>${formatTime(defect.lastSeen)}</dd>
        <dt>Sightings</dt><dd>${defect.sightings || sightings.length}</dd>
        <dt>Id</dt><dd><code>${escapeHtml(defect.id)}</code></dd>
      </dl>
      ${this.workflowHtml(defect)}
      <h3>Thumbnails</h3><div class="thumbs" id="thumbs"><span class="hint">none</span></div>
      <h3>Vehicles (${vehicles.length || defect.vehicles})</h3>
      <div>${vehicles.map((v) => `<span class="chip">${escapeHtml(v)}</span>`).join("") || '<span class="hint">–</span>'}</div>
      <h3>Sightings</h3>
      <ol class="timeline" id="sightings">${sightings.map((s) => `<li>${formatTime(sightingTime(s))} ·
        ${sightingDevice(s) ? `${escapeHtml(sightingDevice(s))} ·` : ""} conf ${Number(s.confidence ?? 0).toFixed(2)}
        ${s.severity != null ? `· sev ${Number(s.severity).toFixed(2)}` : ""}</li>`).join("")
        || '<li class="hint">none listed</li>'}</ol>
      <h3>Status history</h3>
      <ol class="timeline" id="history">${history.map(historyItem).join("")
        || '<li class="hint">no changes yet</li>'}</ol>`;
    this.wireWorkflow(defect);
    // A refusal's notice belongs to the defect it was about (a hidden or merged one is told in the status line).
    const notice = this.body.querySelector("#workflow-error");
    if (this.notice && notice && this.notice.id === this.current) {
      notice.textContent = this.notice.text;
      this.body.querySelector("#status-note").value = this.notice.note;
    }
    this.notice = null;
    this.loadThumbnails(sightings.filter(sightingHasThumbnail).slice(0, MAX_THUMBNAILS));
  }

  workflowHtml(defect) {
    if (!MANAGER_ROLES.includes(this.role)) return "";
    const buttons = WORKFLOW_STATUSES.map((s) =>
      `<button type="button" data-status="${s}" id="set-${s}" class="${defect.status === s ? "current" : ""}">${s}</button>`);
    return `<h3>Workflow</h3><div class="workflow" id="workflow">
      <input id="status-note" placeholder="note (optional)" maxlength="2000">${buttons.join("")}
      <button type="button" id="add-note" title="Add the note to the history; the status stays">note only</button>
      <span class="error" id="workflow-error"></span></div>`;
  }

  wireWorkflow(defect) {
    const box = this.body.querySelector("#workflow");
    if (!box) return;
    const send = async (change) => {
      box.querySelectorAll("button").forEach((b) => { b.disabled = true; });
      try {
        await patchJson(`defects/${encodeURIComponent(defect.id)}`, change, this.etag);
        await this.onChanged(defect.id);
      } catch (err) {
        if (err instanceof AuthError) return this.onAuthLost();
        if (err.status === 412) {
          // Another manager (or the server's repair rule, or a merge) changed it since this panel was opened: show
          // it as it is now (the list and the panel load again, as after a change) and say so, rather than
          // overwrite their change unseen. The note typed stays in its field.
          const why = String(err.detail || "the defect changed meanwhile").split("; read it again")[0];
          this.notice = { id: defect.id, text: `Not changed: ${why}. This is it now.`, note: change.note || "" };
          await this.onChanged(defect.id, `Not changed: ${why}`);
          return;
        }
        box.querySelector("#workflow-error").textContent = describe(err);
        box.querySelectorAll("button").forEach((b) => { b.disabled = false; });
      }
    };
    const noteText = () => box.querySelector("#status-note").value.trim();
    box.querySelectorAll("button[data-status]").forEach((button) => {
      button.addEventListener("click", () => send({ status: button.dataset.status, note: noteText() || null }));
    });
    box.querySelector("#add-note").addEventListener("click", () => {
      if (!noteText()) {
        box.querySelector("#workflow-error").textContent = "Write the note first.";
        return;
      }
      send({ note: noteText() });
    });
  }

  async loadThumbnails(sightings) {
    const box = this.body.querySelector("#thumbs");
    const id = this.current;
    const images = [];
    for (const s of sightings) {
      const eventId = s.event_id || s.id;
      if (!eventId) continue;
      try {
        const url = await imageUrl(`sightings/${encodeURIComponent(eventId)}/thumbnail.jpg`);
        if (this.current !== id) { URL.revokeObjectURL(url); return; }
        this.objectUrls.push(url);
        const img = new Image();
        img.src = url;
        img.alt = `sighting ${eventId}`;
        img.title = `${formatTime(sightingTime(s))} · ${sightingDevice(s) || ""}`;
        images.push(img);
        box.replaceChildren(...images);
      } catch {
        // a sighting without a thumbnail (404) is normal: phones and old agents may not send one
      }
    }
  }
}
