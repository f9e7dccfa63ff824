"""Remote model update: `cmd/model-update` {url, sha256, name, version[, signature]} from the fleet server.

The agent downloads the file over HTTPS (resuming a broken download with HTTP Range), checks its sha256 and,
when a public key is configured, its Ed25519 signature, runs the detector's load sanity check on it, and only
then swaps it in. Models live in one folder:

    <models_dir>/<sha256>.onnx   every model kept (the newest `keep` of them)
    <models_dir>/<sha256>.manifest.json   its manifest: name and version from the command (the detector reads
                                 them, and finds it through the link), source, installed_at, failure
    <models_dir>/current.onnx    -> <sha256>.onnx, what the detector loads
    <models_dir>/previous.onnx   -> <sha256>.onnx, what a rollback goes back to
    <models_dir>/.commands/      the commands being worked on or waiting (Journal), until their result is out

Links are replaced with rename(2), so a power cut leaves either the old or the new model, never half of one.
If the pipeline cannot start the new model after the swap, the links go back and the old one is reloaded.
The handler's returned dict is what the uplink publishes on `cmd/model-update/result`.

The newest command wins: one arriving during an update runs after it (`queued`), replacing any that waited
(`superseded`); a command past its `expires_at` is answered `expired`. A command cut off by a crash is found
in the journal at the next start and answered, or resumed (`recover`). At start, a remotely installed model
that does not load gives way to `previous.onnx`, then to the configured one (`start_candidates`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import http.client
import json
import logging
import os
import re
import shutil
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from edge_agent.config.detector import DetectorConfig
from edge_agent.config.model_update import ModelUpdateConfig
from edge_agent.durable import fsync_dir, write_durably
from edge_agent.health import HealthBoard
from roadmon_contract.commands import expired_reason, is_interim
from roadmon_contract.digest import sha256_file
from roadmon_contract.times import utc_now_iso

log = logging.getLogger(__name__)

COMMAND = "model-update"
CHUNK = 1 << 20
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
COMMAND_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_ATTEMPTS = 3       # restarts that may cut one update off before it is given up as `interrupted`

# Loads the model at a path and raises when it is unusable; returns what it learnt (name, provider...).
SanityCheck = Callable[[Path], dict[str, Any]]
# Called with the model to run now (the new current.onnx after a swap; after a rollback the previous one, or the
# configured model when there was none); the pipeline reloads its detector. Raising means "it does not run here".
Activate = Callable[[str], None]
# Sends a result no command message waits for (queued, resumed, start-up reports) to cmd/model-update/result.
Publish = Callable[[dict[str, Any]], None]


class UpdateRefused(Exception):
    """The command itself is unacceptable (bad field, disabled, pinned model): nothing was downloaded."""


class UpdateExpired(UpdateRefused):
    """The command's expires_at has passed: it is answered `expired` and not carried out."""


class UpdateFailed(Exception):
    """Download, verification or sanity check failed: the current model was not touched."""


def shown(url: str) -> str:
    """URL for logs, results and manifests: without its query, which holds the server's signed capability."""
    return url.split("?", 1)[0]


# ----------------------------------------------------------------------------------------- the store
class ModelStore:
    """The models folder: content-addressed files plus `current` and `previous` links."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.current_link = self.root / "current.onnx"
        self.previous_link = self.root / "previous.onnx"
        self.incoming = self.root / ".incoming"

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(exist_ok=True)

    def _target(self, link: Path) -> str | None:
        """The sha256 a link points at, or None."""
        try:
            name = os.readlink(link)
        except OSError:
            return None
        return Path(name).stem

    def current_sha(self) -> str | None:
        return self._target(self.current_link)

    def previous_sha(self) -> str | None:
        return self._target(self.previous_link)

    def path_of(self, sha: str) -> Path:
        return self.root / f"{sha}.onnx"

    def _set_link(self, link: Path, sha: str | None) -> None:
        if sha is None:
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            return
        tmp = self.root / f".{link.name}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(f"{sha}.onnx", tmp)  # relative, so the folder can move
        os.replace(tmp, link)

    def add(self, downloaded: Path, sha: str, meta: dict[str, Any]) -> Path:
        """Move a verified download in under its sha256 name, with its metadata beside it."""
        final = self.path_of(sha)
        with downloaded.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(downloaded, final)
        self.write_meta(sha, meta)
        fsync_dir(self.root)
        return final

    def meta_path(self, sha: str) -> Path:
        return self.root / f"{sha}.manifest.json"

    def meta(self, sha: str) -> dict[str, Any]:
        try:
            return json.loads(self.meta_path(sha).read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def write_meta(self, sha: str, meta: dict[str, Any]) -> None:
        write_durably(self.meta_path(sha), json.dumps(meta, indent=2, sort_keys=True))

    def swap(self, sha: str) -> str | None:
        """Make SHA current and the old current previous; returns the old current sha."""
        old = self.current_sha()
        if old and old != sha:
            self._set_link(self.previous_link, old)
        self._set_link(self.current_link, sha)
        fsync_dir(self.root)
        return old

    def restore(self, current: str | None, previous: str | None) -> None:
        """Put both links back as they were (a rollback)."""
        self._set_link(self.current_link, current)
        self._set_link(self.previous_link, previous)
        fsync_dir(self.root)

    def prune(self, keep: int) -> list[str]:
        """Delete the oldest model files beyond KEEP, never current or previous; returns the removed shas."""
        pinned = {self.current_sha(), self.previous_sha()}
        files = sorted((p for p in self.root.glob("*.onnx") if not p.is_symlink()),
                       key=lambda p: p.stat().st_mtime, reverse=True)
        removed = []
        for path in files[keep:]:
            if path.stem in pinned:
                continue
            path.unlink(missing_ok=True)
            self.meta_path(path.stem).unlink(missing_ok=True)
            removed.append(path.stem)
        return removed


def models_dir(cfg: ModelUpdateConfig, state_dir: str) -> Path:
    return Path(cfg.models_dir) if cfg.models_dir else Path(state_dir) / "models"


def effective_model(detector: DetectorConfig, update_cfg: ModelUpdateConfig, state_dir: str) -> str:
    """The model the detector should load: a remotely installed current.onnx supersedes 'bundled';
    an explicit path in the config is honoured as it is."""
    current = ModelStore(models_dir(update_cfg, state_dir)).current_link
    if detector.model == "bundled" and current.exists():
        return str(current)
    return detector.model


def start_candidates(detector: DetectorConfig, update_cfg: ModelUpdateConfig, state_dir: str) -> list[tuple[str, str]]:
    """(what, model) to try at start, in order: the effective model and, when that is a remote update's
    current.onnx, previous.onnx and then the configured model ('bundled' where the config names current.onnx).
    A box whose updated model is damaged then still starts, reports it and can take a fixed one remotely."""
    store = ModelStore(models_dir(update_cfg, state_dir))
    first = effective_model(detector, update_cfg, state_dir)
    if Path(first) != store.current_link:
        return [("configured", first)]  # a pinned model: nothing else was meant to run
    out = [("current", first)]
    if store.previous_link.exists():
        out.append(("previous", str(store.previous_link)))
    configured = "bundled" if Path(detector.model) == store.current_link else detector.model
    out.append(("configured" if configured != "bundled" else "bundled", configured))
    return out


# ----------------------------------------------------------------------------------- verification
def load_public_key(text_or_path: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    pem = text_or_path if "-----BEGIN" in text_or_path else Path(text_or_path).read_text()
    key = load_pem_public_key(pem.encode())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("model_update.public_key is not an Ed25519 public key")
    return key


def verify_signature(public_key: Any, path: Path, signature_b64: str | None) -> None:
    """Raise UpdateFailed unless SIGNATURE_B64 is an Ed25519 signature of the file's bytes by PUBLIC_KEY."""
    from cryptography.exceptions import InvalidSignature

    if not signature_b64:
        raise UpdateFailed("a signature is required (model_update.public_key is set) but the command has none")
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        raise UpdateFailed("signature is not valid base64") from None
    try:
        public_key.verify(signature, path.read_bytes())
    except InvalidSignature:
        raise UpdateFailed("bad signature: the model was not signed by the configured key") from None


def sign_file(private_key_pem: bytes, path: Path) -> str:
    """Base64 Ed25519 signature of a model file (for the release side; same as
    `openssl pkeyutl -sign -rawin -inkey key.pem -in model.onnx | base64 -w0`)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):  # the agent verifies Ed25519 only (load_public_key)
        raise ValueError("the release key is not an Ed25519 private key")
    return base64.b64encode(key.sign(path.read_bytes())).decode()


def detector_sanity_check(detector: DetectorConfig) -> SanityCheck:
    """The detector's own load sanity check, run on a candidate file."""

    def check(path: Path) -> dict[str, Any]:
        from edge_agent.detect.detector import load_detector

        loaded = load_detector(detector.model_copy(update={"model": str(path)}))
        info = loaded.info
        return {"name": info.name, "version": info.version, "provider": info.provider, "classes": list(info.classes)}

    return check


# -------------------------------------------------------------------------------------- download
def _ssl_context(cfg: ModelUpdateConfig) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cfg.ca_file) if cfg.ca_file else ssl.create_default_context()


def url_refusal(url: str, cfg: ModelUpdateConfig) -> str | None:
    """Why the box will not fetch a model from URL (https only unless allow_http, under url_prefix), or None.
    The same rule for the command's URL and for every redirect the download follows."""
    if not (url.startswith("https://") or (cfg.allow_http and url.startswith("http://"))):
        return (f"refusing {url.split('://')[0]}:// download: models come over https (for a lab server without "
                "TLS, set model_update.allow_http = true on the device)")
    parts = urlsplit(url)
    if "@" in parts.netloc:
        return "url carries a login (user@host)"
    # As a text prefix, .../models/../../private/m (or %2e%2e, ..%2f, \) passed; a front end that tidies paths
    # then served a file from outside the prefix.
    path = unquote(parts.path)
    if "\\" in path or any(step in (".", "..") for step in path.split("/")):
        return "url path has '.' or '..' steps"
    if cfg.url_prefix and (_origin(url) != _origin(cfg.url_prefix)
                           or not parts.path.startswith(urlsplit(cfg.url_prefix).path)):
        return f"url is outside model_update.url_prefix ({cfg.url_prefix})"
    return None


def _origin(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of URL, compared whole: as text, a prefix without its host's end let
    https://fleet.example.org.evil.net/ through; None for an unreadable port."""
    parts = urlsplit(url)
    try:
        return parts.scheme, (parts.hostname or "").lower(), parts.port
    except ValueError:
        return None


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL the command itself could have named: urllib followed any, so a 302 took
    a download under url_prefix to plain http or another host."""

    def __init__(self, cfg: ModelUpdateConfig) -> None:
        self.cfg = cfg

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        why = url_refusal(newurl, self.cfg)
        if why is not None:
            raise UpdateRefused(f"the model server redirected to {shown(newurl)}: {why}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def download(url: str, dest: Path, cfg: ModelUpdateConfig) -> int:
    """Fetch URL into DEST, resuming a broken transfer with HTTP Range; returns the size in bytes.

    Each attempt continues from what DEST already holds; a server that ignores Range (200 instead of 206)
    restarts the file. Raises UpdateFailed after cfg.attempts broken attempts.
    """
    limit = int(cfg.max_size_mb * 1e6)
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=_ssl_context(cfg)),
                                         _CheckedRedirects(cfg))
    last_error = ""
    for attempt in range(1, cfg.attempts + 1):
        have = dest.stat().st_size if dest.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with opener.open(request, timeout=cfg.timeout_s) as resp:
                resuming = resp.status == 206
                length = resp.headers.get("Content-Length")
                total = (have if resuming else 0) + int(length) if length else None
                if total is not None and total > limit:
                    raise UpdateFailed(f"model is {total / 1e6:.1f} MB, over model_update.max_size_mb")
                if total is not None and shutil.disk_usage(dest.parent).free < total - have + 50e6:
                    raise UpdateFailed(f"not enough disk space for a {total / 1e6:.1f} MB model")
                with dest.open("ab" if resuming else "wb") as out:
                    while block := resp.read(CHUNK):
                        out.write(block)
                        if out.tell() > limit:
                            raise UpdateFailed("download exceeds model_update.max_size_mb")
            size = dest.stat().st_size
            # http.client returns a short body without complaint when the connection drops; the length tells.
            if total is None or size == total:
                return size
            last_error = f"connection closed at {size} of {total} bytes"
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # our partial file is already complete, or longer than the model
                dest.unlink()
            elif exc.code < 500 and exc.code not in (408, 429):
                raise UpdateFailed(f"download refused: HTTP {exc.code} {exc.reason} for {shown(url)}") from None
            last_error = f"HTTP {exc.code} {exc.reason}"
        except (ssl.SSLCertVerificationError, urllib.error.URLError) as exc:
            cert_error = exc if isinstance(exc, ssl.SSLCertVerificationError) else getattr(exc, "reason", None)
            if isinstance(cert_error, ssl.SSLCertVerificationError):  # retrying will not help
                raise UpdateFailed(f"TLS certificate of the model server not trusted: {cert_error.verify_message}"
                                   " (set model_update.ca_file)") from None
            last_error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        except (http.client.HTTPException, OSError, TimeoutError) as exc:
            last_error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        got = dest.stat().st_size if dest.exists() else 0
        log.warning("model download attempt %d/%d broke off at %d bytes: %s", attempt, cfg.attempts, got, last_error)
        if attempt < cfg.attempts:
            time.sleep(min(0.2 * 2**attempt, 5))
    raise UpdateFailed(f"download interrupted {cfg.attempts} times, last: {last_error}")


# ------------------------------------------------------------------------------------------ journal
class Journal:
    """The model-update commands being worked on or waiting, one file each in <models_dir>/.commands/, written
    before the work starts and removed once the broker has the command's final result. What a crash or a
    power cut leaves here is answered (or resumed) at the next start, so no acked command goes unanswered."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            entry = json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) else None

    def write(self, key: str, payload: dict[str, Any], state: str) -> None:
        before = self.get(key) or {}
        attempts = int(before.get("attempts", 0)) + (state == "running")
        entry = {"payload": payload, "state": state, "attempts": attempts, "since": before.get("since", utc_now_iso())}
        self.root.mkdir(parents=True, exist_ok=True)
        write_durably(self._path(key), json.dumps(entry))

    def remove(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def entries(self) -> list[tuple[str, dict[str, Any]]]:
        """(key, entry) oldest command first, by the server's issued_at (the box's own clock may have been set
        back between two commands: a Pi without a clock chip after a power cut); unreadable files (a crash while
        writing one) are dropped."""
        found = []
        for path in self.root.glob("*.json") if self.root.is_dir() else ():
            entry = self.get(path.stem)
            if entry is None or not isinstance(entry.get("payload"), dict):
                log.warning("dropping unreadable model-update journal entry %s", path)
                path.unlink(missing_ok=True)
                continue
            found.append((path.stem, entry))
        return sorted(found, key=lambda item: str(item[1]["payload"].get("issued_at") or item[1].get("since", "")))


# ------------------------------------------------------------------------------------------ updater
class ModelUpdater:
    """Handles `cmd/model-update`, one update at a time; the newest command wins.

    A command that arrives while an update runs is answered `queued` and runs after it; a newer one arriving
    meanwhile takes its place (the older is answered `superseded`). Results of queued and resumed commands go
    out through `publish` (the uplink's publish_result, set by `register`)."""

    def __init__(self, cfg: ModelUpdateConfig, store: ModelStore, sanity_check: SanityCheck,
                 activate: Activate | None = None, health: HealthBoard | None = None,
                 pinned_model: str | None = None, fallback_model: str = "bundled",
                 publish: Publish | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.sanity_check = sanity_check
        self.activate = activate
        self.health = health
        self.pinned_model = pinned_model
        self.fallback_model = fallback_model
        self.publish = publish
        self.journal = Journal(store.root / ".commands")
        # The sha256 of the model the pipeline runs, when known (set at start and on each activation): after a
        # start-up fallback it is not current.onnx's, and pushing current's sha again must then not be a no-op.
        self.running_sha: str | None = None
        self._mutex = threading.Lock()
        self._running = False
        self._next: dict[str, Any] | None = None
        self._public_key: Any = None
        self._key_error: str | None = None
        if cfg.public_key:
            try:
                self._public_key = load_public_key(cfg.public_key)
            except Exception as exc:  # a bad key must not stop the agent: only updates are refused, with the reason
                self._key_error = f"model_update.public_key is unusable: {exc}"
                log.error("%s; remote model updates are refused until it is fixed", self._key_error)

    @classmethod
    def from_config(cls, agent_cfg: Any, activate: Activate | None = None,
                    health: HealthBoard | None = None) -> ModelUpdater:
        """Build from the whole AgentConfig: models folder, the detector's check, and whether the
        configured detector.model lets remote updates take effect."""
        store = ModelStore(models_dir(agent_cfg.model_update, agent_cfg.device.state_dir))
        model = agent_cfg.detector.model
        pinned = None if model == "bundled" or Path(model) == store.current_link else model
        return cls(agent_cfg.model_update, store, detector_sanity_check(agent_cfg.detector), activate, health, pinned)

    def register(self, uplink: Any) -> None:
        uplink.on_command(COMMAND, self.handle, on_published=self.published, accept=self.accept)
        self.publish = lambda result: uplink.publish_result(COMMAND, result)

    # -------------------------------------------------------------------------------- entry points
    def handle(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The command handler: never raises; the returned dict is published as the result."""
        t0 = time.monotonic()
        try:
            self._check_command(payload)
        except UpdateRefused as exc:
            result = self._refusal(payload, t0, exc)
            self._settled(result)
            return result
        with self._mutex:
            if self._running:
                return self._queue(payload, t0)
            self._running = True
        result = self._run(payload, t0)
        self._start_next()
        self._settled(result)
        return result

    def accept(self, payload: dict[str, Any]) -> None:
        """Journal PAYLOAD as it arrives, before the broker is told it did: a power cut between the PUBACK and
        `handle` left a command the broker had deleted and nothing on the box remembered (never answered).
        `recover` resumes a `received` entry like a queued one."""
        try:
            self._check_command(payload)
        except UpdateRefused:
            return  # refused at once by `handle`: nothing to remember
        key = self._key(payload)
        if key and self.journal.get(key) is None:
            self.journal.write(key, payload, "received")

    def published(self, result: dict[str, Any]) -> None:
        """The broker has RESULT: its command is answered for good, so it leaves the journal."""
        if is_interim(COMMAND, result):
            return
        key = self._key(result)
        if key:
            self.journal.remove(key)

    def recover(self) -> None:
        """At start: answer, or resume, what a crash or power cut interrupted. An update whose swap was done is
        `installed` (or `failed` when the agent could not start that model); one expired, or cut off by
        restarts MAX_ATTEMPTS times, is answered so; the newest of the rest is resumed (its download goes on
        from its .part file), older ones are `superseded`."""
        entries = self.journal.entries()
        running = self.running_sha or self.store.current_sha()
        resumable = []
        for _key, entry in entries:
            payload, t0 = entry["payload"], time.monotonic()
            sha = str(payload.get("sha256", "")).lower()
            was_running = entry.get("state") == "running"
            if was_running and sha == running:
                self._emit(self._result(payload, t0, ok=True, status="installed",
                                        reason="finished before the agent restarted"))
            elif was_running and sha == self.store.current_sha():
                self._emit(self._result(payload, t0, ok=False, status="failed",
                                        reason=f"swapped in before the agent restarted, but the agent could not "
                                               f"start it and runs {running or 'another model'}"))
            elif self._expired(payload):
                self._emit(self._result(payload, t0, ok=False, status="expired", reason=self._expired(payload)))
            elif int(entry.get("attempts", 0)) >= MAX_ATTEMPTS:
                self._emit(self._result(payload, t0, ok=False, status="interrupted",
                                        reason=f"cut off by {entry['attempts']} agent restarts; push it again"))
            else:
                resumable.append(payload)
        for older in resumable[:-1]:
            self._emit(self._superseded(older, resumable[-1]))
        if not resumable:
            self._drop_stale_partials(keep=None)
            return
        newest = resumable[-1]
        log.warning("resuming model update %s, interrupted by a restart", newest.get("sha256"))
        with self._mutex:
            self._running = True
        threading.Thread(target=self._run_queued, args=(newest,), name="model-update", daemon=True).start()

    def report_fallback(self, reason: str, running: str | None) -> None:
        """Tell the server (on cmd/model-update/result) that the agent started with a fallback model."""
        self._emit(self._result({}, time.monotonic(), ok=False, status="fallback", reason=reason,
                                running_sha256=running))

    # ------------------------------------------------------------------------------------ queueing
    def _queue(self, payload: dict[str, Any], t0: float) -> dict[str, Any]:
        """Called with the mutex held: PAYLOAD runs after the update in progress, in place of any waiting one."""
        older, self._next = self._next, payload
        self.journal.write(self._checked_key(payload), payload, "queued")
        if older is not None and self._key(older) != self._key(payload):
            self._emit(self._superseded(older, payload))
        log.info("model update %s queued behind the one in progress", payload.get("sha256"))
        return self._result(payload, t0, ok=True, status="queued",
                            reason="another model update is running; this one follows it")

    def _superseded(self, older: dict[str, Any], newer: dict[str, Any]) -> dict[str, Any]:
        return self._result(older, time.monotonic(), ok=False, status="superseded",
                            reason=f"a newer model-update ({newer.get('sha256')}) came before this one started")

    def _start_next(self) -> None:
        with self._mutex:
            payload, self._next = self._next, None
            if payload is None:
                self._running = False
                return
        threading.Thread(target=self._run_queued, args=(payload,), name="model-update", daemon=True).start()

    def _run_queued(self, payload: dict[str, Any]) -> None:
        self._emit(self._run(payload, time.monotonic()))
        self._start_next()

    def _emit(self, result: dict[str, Any]) -> None:
        """A result no message waits for: to the server through `publish`, else it is final at once."""
        if self.publish is not None:
            self.publish(result)
        else:
            self.published(result)

    def _settled(self, result: dict[str, Any]) -> None:
        """A result HANDLE returns: the uplink publishes it and calls `published`; without one it is final."""
        if self.publish is None:
            self.published(result)

    # ------------------------------------------------------------------------------------- the work
    def _run(self, payload: dict[str, Any], t0: float) -> dict[str, Any]:
        """One update, journalled first; never raises."""
        try:
            self._check_command(payload)  # again: a queued or resumed command may have expired meanwhile
            self.journal.write(self._checked_key(payload), payload, "running")
            result = self._update(payload, t0)
        except UpdateRefused as exc:
            result = self._refusal(payload, t0, exc)
        except UpdateFailed as exc:
            result = self._result(payload, t0, ok=False, status="failed", reason=str(exc))
        except Exception as exc:  # nothing may crash the agent; the current model is untouched here
            log.exception("model update failed unexpectedly")
            result = self._result(payload, t0, ok=False, status="failed", reason=f"{type(exc).__name__}: {exc}")
        log.log(logging.INFO if result["ok"] else logging.WARNING, "model update %s: %s %s",
                result["status"], result.get("sha256"), result.get("reason", ""))
        if self.health:
            self.health.count("model_updates_ok" if result["ok"] else "model_updates_failed")
        return result

    def _refusal(self, payload: Any, t0: float, exc: UpdateRefused) -> dict[str, Any]:
        status = "expired" if isinstance(exc, UpdateExpired) else "refused"
        return self._result(payload, t0, ok=False, status=status, reason=str(exc))

    def _result(self, payload: dict[str, Any], t0: float, ok: bool, status: str, **extra: Any) -> dict[str, Any]:
        out = {"ok": ok, "status": status, "sha256": payload.get("sha256") if isinstance(payload, dict) else None,
               "name": payload.get("name") if isinstance(payload, dict) else None,
               "version": payload.get("version") if isinstance(payload, dict) else None,
               "current_sha256": self.store.current_sha(), "finished_at": utc_now_iso(),
               "duration_s": round(time.monotonic() - t0, 3)}
        for echoed in ("request_id", "command_id"):
            if isinstance(payload, dict) and echoed in payload:
                out[echoed] = payload[echoed]
        out.update(extra)
        return out

    @classmethod
    def _checked_key(cls, payload: dict[str, Any]) -> str:
        """The journal's name for a command _check_command passed: its valid sha256 alone gives one."""
        key = cls._key(payload)
        if key is None:
            raise UpdateRefused("'sha256' must be 64 hex digits")
        return key

    @staticmethod
    def _key(payload: dict[str, Any]) -> str | None:
        """The journal's name for a command: the server's command_id, else the model's sha256."""
        command_id = payload.get("command_id")
        if isinstance(command_id, str) and COMMAND_ID_RE.match(command_id):
            return command_id
        sha = payload.get("sha256")
        return sha.lower() if isinstance(sha, str) and SHA256_RE.match(sha.lower()) else None

    @staticmethod
    def _expired(payload: dict[str, Any]) -> str | None:
        try:
            return expired_reason(payload)
        except ValueError as exc:
            return f"unreadable expires_at: {exc}"

    def _check_command(self, payload: Any) -> tuple[str, str]:
        if not self.cfg.enabled:
            raise UpdateRefused("remote model updates are disabled on this device (model_update.enabled)")
        if self._key_error:
            raise UpdateRefused(self._key_error)
        if self.pinned_model:
            raise UpdateRefused(f"detector.model is pinned to {self.pinned_model}; set it to "
                                f"{self.store.current_link} or 'bundled' to allow remote updates")
        if not isinstance(payload, dict):
            raise UpdateRefused("payload must be a JSON object {url, sha256, name, version}")
        expired = self._expired(payload)
        if expired:
            raise UpdateExpired(expired)
        url, sha = payload.get("url"), payload.get("sha256")
        if not isinstance(url, str) or not url:
            raise UpdateRefused("missing 'url'")
        if not isinstance(sha, str) or not SHA256_RE.match(sha.lower()):
            raise UpdateRefused("'sha256' must be 64 hex digits")
        why = url_refusal(url, self.cfg)
        if why is not None:
            raise UpdateRefused(why)
        if self._public_key is not None and not payload.get("signature"):  # before megabytes are fetched for nothing
            raise UpdateRefused("a signature is required (model_update.public_key is set) but the command has none")
        return url, sha.lower()

    def _already_current(self, sha: str) -> bool:
        """SHA is what current.onnx names and what the pipeline runs (after a start-up fallback it is not)."""
        return self.store.current_sha() == sha and self.running_sha in (None, sha)

    def _update(self, payload: dict[str, Any], t0: float) -> dict[str, Any]:
        url, sha = self._check_command(payload)
        self.store.ensure()
        if self._already_current(sha):
            return self._result(payload, t0, ok=True, status="already_current")

        self._drop_stale_partials(keep=sha)
        kept = self.store.path_of(sha)
        if kept.is_file() and sha256_file(kept) == sha:
            # Still on disk (an earlier model, e.g. going back to the previous one): no download needed.
            candidate, downloaded = kept, False
            if self._public_key is not None:
                verify_signature(self._public_key, kept, payload.get("signature"))
        else:
            candidate, downloaded = self._fetch_and_verify(url, sha, payload.get("signature")), True
        try:
            info = self.sanity_check(candidate)
        except Exception as exc:
            if downloaded:
                candidate.unlink(missing_ok=True)
            raise UpdateFailed(f"model failed the load sanity check: {exc}") from None

        meta = {"sha256": sha, "name": payload.get("name"), "version": payload.get("version"), "url": shown(url),
                "installed_at": utc_now_iso(), "check": info}
        if downloaded:
            self.store.add(candidate, sha, meta)
        else:
            self.store.write_meta(sha, meta)
            os.utime(candidate)  # newest again, so pruning keeps it
        before = (self.store.current_sha(), self.store.previous_sha())
        self.store.swap(sha)
        if self.activate:
            try:
                self.activate(str(self.store.current_link))
            except Exception as exc:
                return self._roll_back(payload, t0, sha, before, meta, exc)
            self.running_sha = sha
        removed = self.store.prune(self.cfg.keep)
        if self.health:
            self.health.update(model={"name": meta["name"], "version": meta["version"], "sha256": sha})
        return self._result(payload, t0, ok=True, status="installed", previous_sha256=before[0],
                            bytes=self.store.path_of(sha).stat().st_size, provider=info.get("provider"),
                            pruned=removed)

    def _drop_stale_partials(self, keep: str | None) -> None:
        """A download cut off by a crash is resumed when the same model is asked for again; others go."""
        for partial in self.store.incoming.glob("*.part") if self.store.incoming.is_dir() else ():
            if partial.name != f"{keep}.part":
                partial.unlink(missing_ok=True)

    def _fetch_and_verify(self, url: str, sha: str, signature: str | None) -> Path:
        partial = self.store.incoming / f"{sha}.part"
        try:
            download(url, partial, self.cfg)
            got = sha256_file(partial)
            if got != sha:
                raise UpdateFailed(f"sha256 mismatch: expected {sha}, downloaded file has {got}")
            if self._public_key is not None:
                verify_signature(self._public_key, partial, signature)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return partial

    def _roll_back(self, payload: dict[str, Any], t0: float, sha: str, before: tuple[str | None, str | None],
                   meta: dict[str, Any], exc: Exception) -> dict[str, Any]:
        log.error("new model %s failed to start (%s); rolling back to %s", sha, exc, before[0])
        self.store.restore(*before)
        self.store.write_meta(sha, {**meta, "failed_at": utc_now_iso(), "failure": str(exc)})
        reason = f"new model failed to start: {exc}"
        if self.activate:
            back = str(self.store.current_link) if before[0] else self.fallback_model
            try:
                self.activate(back)
                self.running_sha = before[0]
            except Exception as again:  # the old model worked a minute ago; say so loudly, keep running
                reason += f"; reloading the previous model also failed: {again}"
        return self._result(payload, t0, ok=False, status="rolled_back", reason=reason, previous_sha256=before[0])
