"""The one-command demo: a simulated drive goes through the whole system and ends up on the dashboard.

    python -m scripts.demo up [--seed N] [--port P]     (make demo)
    python -m scripts.demo down [--keep-services]       (make demo-down)

`up` starts the project-local PostGIS and Mosquitto (scripts/services.py), makes a fresh demo database,
migrates it, provisions a demo vehicle and viewer/manager tokens, generates a simulated drive (cached under
.state/demo/ for the next run), starts the fleet server (API + ingest, in the background, logs in
.state/demo/), replays the drive through the real agent pipeline with the uplink to the broker, waits until the
server has confirmed every event, and prints a summary with the geolocation error against the simulator's
truth and the dashboard URL. Running it again starts over with a fresh database; the drive is reused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
from rich.console import Console
from rich.table import Table

from scripts import services

ROOT = Path(__file__).resolve().parent.parent

console = Console()

DEMO = services.STATE.resolve() / "demo"  # absolute: its commands run with the checkout as cwd
DEVICE_ID = "demo-veh-1"
DB_NAME = "roadmon_demo"
DEFAULT_PORT = int(os.environ.get("ROADMON_DEMO_PORT", "8765"))
DEFAULT_SEED = 7
DRIVE_MINUTES = 2.0
DRIVE_POTHOLES = 12
DRIVE_CRACKS = 4  # short cracks painted across the lane: the model's second class
# A defect on the map farther than this from every true defect of its class counts as a false one; the median
# error is far below it (see the summary), so the gate only separates matches from strays.
MATCH_GATE_M = 8.0
SCORED_CLASSES = ("pothole", "crack")  # the bundled model's classes, each scored against the drive's truth


def shown(path: Path) -> str:
    """PATH for a message: relative to the checkout when inside it (short), else as it is (ROADMON_STATE
    may point anywhere)."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


class DemoError(RuntimeError):
    """A step failed; the message says which and where its log is."""


# ------------------------------------------------------------------------------------------- helpers
@dataclass
class Paths:
    root: Path = DEMO

    @property
    def server_toml(self) -> Path:
        return self.root / "server.toml"

    @property
    def dsn_file(self) -> Path:
        return self.root / "database.dsn"

    @property
    def agent_toml(self) -> Path:
        return self.root / "agent.toml"

    @property
    def agent_state(self) -> Path:
        return self.root / "agent"

    @property
    def outbox(self) -> Path:
        return self.agent_state / "outbox.db"

    @property
    def mqtt_password(self) -> Path:
        return self.root / "device.secret"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens.json"

    @property
    def pids(self) -> Path:
        return self.root / "pids.json"

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"


def tool(name: str) -> str:
    """A console script of this project, from the same environment as this interpreter."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise DemoError(f"`{name}` is not installed: run `make install` first")
    return found


def fleet_server(paths: Paths, *args: str) -> list[str]:
    """A `fleet-server` command line with the demo's config (a global option, before the command)."""
    return [tool("fleet-server"), "--config", str(paths.server_toml), *args]


def run_logged(args: Sequence[str], log: Path, timeout_s: float, what: str, ok_codes: tuple[int, ...] = (0,)) -> str:
    """Run a command to the end, append its output to LOG, and return its stdout."""
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"\n$ {' '.join(args)}\n")
        fh.flush()
        try:
            result = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
        except subprocess.TimeoutExpired as exc:
            raise DemoError(f"{what} took longer than {timeout_s:.0f} s; log: {log}") from exc
        fh.write(result.stdout)
        fh.write(result.stderr)
    if result.returncode not in ok_codes:
        tail = (result.stderr or result.stdout).strip().splitlines()[-15:]
        raise DemoError(f"{what} failed (exit {result.returncode}); log: {log}\n" + "\n".join(tail))
    return result.stdout


def last_json(text: str) -> Any:
    """The last JSON document in TEXT that starts at the beginning of a line (commands may log before it)."""
    lines = text.splitlines(keepends=True)
    for i in range(len(lines) - 1, -1, -1):
        if lines[i][:1] in ("{", "["):
            with contextlib.suppress(json.JSONDecodeError):
                return json.loads("".join(lines[i:]))
    raise ValueError("no JSON in the output")


def http_json(url: str, token: str | None = None, timeout_s: float = 5.0) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


# ------------------------------------------------------------------------------- background server
@dataclass
class Background:
    """The server processes the demo leaves running; their pids are kept in pids.json for `down`."""

    paths: Paths
    procs: dict[str, int] = field(default_factory=dict)
    children: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log = self.paths.log(name).open("a", encoding="utf-8")
        log.write(f"\n$ {' '.join(args)}\n")
        log.flush()
        # A session of its own: the server outlives this script, and `down` can stop its whole group.
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        self.procs[name] = proc.pid
        self.children[name] = proc
        self.paths.pids.write_text(json.dumps(self.procs))

    def alive(self, name: str) -> bool:
        """Whether the process this object started as NAME is still running."""
        proc = self.children.get(name)
        return proc is not None and proc.poll() is None

    def stop_all(self) -> list[str]:
        """Stop every process recorded in pids.json that is still ours; returns their names."""
        try:
            recorded = json.loads(self.paths.pids.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            recorded = {}
        stopped = []
        for name, pid in recorded.items():
            if _is_ours(pid, self.paths):
                _stop_group(pid)
                stopped.append(name)
        self.paths.pids.unlink(missing_ok=True)
        self.procs.clear()
        for proc in self.children.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)  # reap our own children
        self.children.clear()
        return stopped


def _cmdline(pid: int | None) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
    except OSError:
        return ""


def _is_ours(pid: int, paths: Paths) -> bool:
    """True when PID runs and is one of ours (its command line names our config), not a recycled pid."""
    return str(paths.root) in _cmdline(pid)


def _stop_group(pid: int, timeout_s: float = 15.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    if Path(f"/proc/{pid}").exists():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


# ------------------------------------------------------------------------------------- the steps
def server_config(
    paths: Paths,
    info: services.ServiceInfo,
    port: int,
    device_id: str = DEVICE_ID,
    broker: services.Mosquitto | None = None,
) -> dict[str, Any]:
    """The server's config for the demo. Its ingest subscribes to the demo vehicle only, in a share group of
    its own, so another server on the same broker (a developer's tests) never takes the demo's messages."""
    broker = broker or services.Mosquitto()
    return {
        "database": {"dsn_file": str(paths.dsn_file)},
        "mqtt": {
            "host": info.mqtt_host,
            "port": info.mqtt_port,
            "username": info.server_user,
            "password_file": str(broker.server_secret),
        },
        # The simulator dates its drives on a fixed day (reproducible), which may be older than the
        # production horizon for late data; the demo accepts it.
        "ingest": {
            "devices": [device_id],
            "batch_wait_s": 0.05,
            "horizon_days": 3650,
        },
        "broker_files": {"passwd_file": info.passwd_file, "acl_file": info.acl_file, "pid_file": info.broker_pid_file},
        "api": {"host": "127.0.0.1", "port": port},
        "models": {"dir": str(paths.root / "models"), "url_base": f"http://127.0.0.1:{port}"},
    }


def prepare_database(paths: Paths) -> str:
    dsn = services.Postgres().create_database(DB_NAME)
    paths.dsn_file.write_text(dsn + "\n", encoding="utf-8")
    paths.dsn_file.chmod(0o600)
    return dsn


def provision_device(paths: Paths) -> str:
    """Register the demo vehicle with the server and the broker; returns its MQTT password."""
    out = run_logged(
        fleet_server(paths, "device", "add", DEVICE_ID, "--name", "demo vehicle", "--json"),
        paths.log("provision"),
        60,
        "fleet-server device add",
    )
    password = _password_from(out)
    paths.mqtt_password.write_text(password + "\n", encoding="utf-8")
    paths.mqtt_password.chmod(0o600)
    return password


def _password_from(output: str) -> str:
    with contextlib.suppress(ValueError):
        doc = last_json(output)
        if isinstance(doc, dict):
            for key in ("password", "mqtt_password"):
                if doc.get(key):
                    return str(doc[key])
    for line in output.splitlines():
        key, _, value = line.partition(":") if ":" in line else line.partition("=")
        if key.strip().lower() in ("password", "mqtt password", "mqtt_password") and value.strip():
            return value.strip().strip("'\"")
    raise DemoError(f"could not read the MQTT password from `fleet-server device add`:\n{output}")


def create_token(paths: Paths, role: str, name: str) -> str:
    out = run_logged(
        fleet_server(paths, "token", "create", "--role", role, "--name", name, "--json"),
        paths.log("provision"),
        60,
        "fleet-server token create",
    )
    with contextlib.suppress(ValueError):
        doc = last_json(out)
        if isinstance(doc, dict) and doc.get("token"):
            return str(doc["token"])
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    if not lines:
        raise DemoError("`fleet-server token create` printed no token")
    return lines[-1].split()[-1]


def ensure_drive(
    paths: Paths,
    seed: int,
    minutes: float = DRIVE_MINUTES,
    potholes: int = DRIVE_POTHOLES,
    cracks: int = DRIVE_CRACKS,
    gps_noise_m: float = 3.0,
    gps_noise_model: str = "white",
) -> Path:
    """The simulated drive for SEED, generated once and reused (it is deterministic for its settings).
    The agent config the simulator writes points into the folder it rendered, so it renders in place and a
    marker file says when it finished."""
    out = paths.root / f"drive-seed{seed}-{minutes:g}min-{potholes}p{cracks}c-gps{gps_noise_m:g}m-{gps_noise_model}"
    done = out / ".complete"
    if done.exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    run_logged(
        [
            tool("edge-agent"),
            "sim",
            "drive",
            "--out",
            str(out),
            "--seed",
            str(seed),
            "--minutes",
            f"{minutes:g}",
            "--defects",
            str(potholes + cracks),
            "--potholes",
            str(potholes),
            "--gps-noise-m",
            f"{gps_noise_m:g}",
            "--gps-noise-model",
            gps_noise_model,
        ],
        paths.log("sim"),
        900,
        "edge-agent sim drive",
    )
    done.touch()
    return out


def agent_config(
    paths: Paths, drive: Path, info: services.ServiceInfo, device_id: str = DEVICE_ID, model: Path | None = None
) -> Path:
    """The sim's agent config (its camera calibration matches the video) pointed at the local broker."""
    cfg = tomllib.loads((drive / "agent.toml").read_text(encoding="utf-8"))
    cfg.setdefault("device", {}).update({"id": device_id, "state_dir": str(paths.agent_state)})
    cfg.setdefault("outbox", {})["file"] = str(paths.outbox)
    if model is not None:
        cfg.setdefault("detector", {})["model"] = str(Path(model).resolve())
    uplink = cfg.setdefault("uplink", {})
    uplink.update({"enabled": True, "host": info.mqtt_host, "port": info.mqtt_port})
    uplink.update(_uplink_login(paths, device_id))
    paths.agent_toml.write_text(tomli_w.dumps(cfg), encoding="utf-8")
    return paths.agent_toml


def _uplink_login(paths: Paths, device_id: str) -> dict[str, Any]:
    """Plain MQTT on loopback with the device's own login; only keys the uplink section knows are set."""
    from edge_agent.config.uplink import UplinkConfig

    known = UplinkConfig.model_fields
    wanted = {
        "tls": False,
        "username": device_id,
        "password_file": str(paths.mqtt_password),
        "heartbeat_s": 5.0,
        "ack_timeout_s": 20.0,
    }
    return {k: v for k, v in wanted.items() if k in known}


def wait_for_api(port: int, token: str, background: Background, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    url = f"http://127.0.0.1:{port}/api/v1/me"
    while time.monotonic() < deadline:
        if not background.alive("server"):
            code = background.children["server"].returncode
            raise DemoError(f"the fleet server exited (status {code}); log: {background.paths.log('server')}")
        with contextlib.suppress(OSError, urllib.error.URLError, json.JSONDecodeError):
            http_json(url, token, timeout_s=2)
            return
        time.sleep(0.3)
    raise DemoError(
        f"the fleet server did not answer on port {port} within {timeout_s:.0f} s; "
        f"log: {background.paths.log('server')}"
    )


def replay(paths: Paths, drive: Path, drain_s: float = 120) -> dict[str, Any]:
    """Run the agent's pipeline on the drive; with the uplink it exits once the server confirmed everything
    (or after DRAIN_S). Returns the replay's JSON summary."""
    out = run_logged(
        [
            tool("edge-agent"),
            "replay",
            "--video",
            str(drive / "video.mp4"),
            "--nmea",
            str(drive / "drive.nmea"),
            "--config",
            str(paths.agent_toml),
            "--outbox",
            str(paths.outbox),
            "--uplink",
            "--drain-s",
            str(drain_s),
            "--json",
        ],
        paths.log("agent"),
        600 + drain_s,
        "edge-agent replay",
        ok_codes=(0, 3),  # 3: rows still unconfirmed after DRAIN_S; the summary shows them and the demo fails
    )
    with contextlib.suppress(ValueError):
        doc = last_json(out)
        if isinstance(doc, dict):
            return doc
    return {}


def outbox_counts(outbox: Path) -> dict[str, dict[str, int]]:
    from edge_agent.link.outbox import Outbox

    with Outbox(outbox, agent=False) as box:  # look only: never touch a queue an agent may drain
        stats = box.stats()
    return {"event": stats["events"], "coverage": stats["coverage"]}


def ensure_broker() -> None:
    """Start Mosquitto again if it died: Debian's 2.0.11 segfaults now and then right after it re-read its
    password file (provisioning the demo vehicle reloads it), and the demo then waited for nothing."""
    time.sleep(0.5)  # a crash on reload comes within moments of it
    if services.running_broker_died():
        console.print("Mosquitto died after re-reading its logins (a crash of Debian's 2.0.11); starting it again")
        services.Mosquitto().up()


def wait_confirmed(outbox: Path, timeout_s: float, poll_s: float = 0.5) -> dict[str, dict[str, int]]:
    """Poll the agent's outbox until nothing is pending or in flight (the server confirmed it all)."""
    deadline = time.monotonic() + timeout_s
    counts = outbox_counts(outbox)
    while time.monotonic() < deadline:
        if all(c.get("pending", 0) + c.get("sent", 0) == 0 for c in counts.values()):
            return counts
        time.sleep(poll_s)
        counts = outbox_counts(outbox)
    return counts


# ------------------------------------------------------------------------------- geolocation error
def points_of(collection: dict[str, Any], cls: str, visible_only: bool = False) -> list[tuple[float, float]]:
    """(lat, lon) of the Point features of class CLS in a GeoJSON FeatureCollection. VISIBLE_ONLY keeps the
    simulator's true defects that came into the camera's view (it says so with `frames_boxed`)."""
    out = []
    for feature in collection.get("features", []):
        props = feature.get("properties") or {}
        geometry = feature.get("geometry") or {}
        if props.get("class", props.get("class_name")) != cls or geometry.get("type") != "Point":
            continue
        if visible_only and props.get("frames_boxed", 1) == 0:
            continue
        lon, lat = geometry["coordinates"][:2]
        out.append((float(lat), float(lon)))
    return out


@dataclass
class GeoScore:
    truth: int
    found: int
    errors_m: list[float]
    strays: int

    @property
    def median_m(self) -> float | None:
        return statistics.median(self.errors_m) if self.errors_m else None

    @property
    def max_m(self) -> float | None:
        return max(self.errors_m) if self.errors_m else None


def score_geolocation(
    truth: Iterable[tuple[float, float]], found: Iterable[tuple[float, float]], gate_m: float = MATCH_GATE_M
) -> GeoScore:
    """Match true defects and found ones one to one within GATE_M, as every bench scores a drive."""
    from edge_agent.lab.drive_eval import match

    truth, found = list(truth), list(found)
    errors = [d for _, _, d in match(found, truth, gate_m)]
    return GeoScore(truth=len(truth), found=len(errors), errors_m=errors, strays=len(found) - len(errors))


# ------------------------------------------------------------------------------------------ browser
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)


def headless_chrome(user_data_dir: Path, width: int = 1440, height: int = 900):
    """Debian's chromium driven by selenium through Debian's chromedriver (nothing downloaded at run time)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (Path(binary).exists() and Path(driver_path).exists()):
        raise DemoError("chromium and chromium-driver are needed: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROME_FLAGS, f"--window-size={width},{height}", f"--user-data-dir={user_data_dir}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver_path))


def screenshot(port: int, out: Path) -> Path:
    """A picture of the running demo's dashboard (the README's screenshot), signed in as the manager, with one
    defect's panel open."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    tokens = json.loads(Paths().tokens.read_text())
    profile = Paths().root / "chrome-profile"
    shutil.rmtree(profile, ignore_errors=True)
    driver = headless_chrome(profile, 1440, 1000)
    try:
        driver.get(f"http://127.0.0.1:{port}/#token={tokens['manager']}")
        wait = WebDriverWait(driver, 20)
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#defect-list li")))
        time.sleep(1.0)  # clusters settle at the fitted zoom
        # A marker clicked on the map opens its panel without zooming in, so the whole drive stays in view.
        markers = driver.find_elements(By.CSS_SELECTOR, ".leaflet-marker-pane .defect-icon")
        if markers:
            driver.execute_script(
                "arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", markers[len(markers) // 2]
            )
        else:
            driver.find_element(By.CSS_SELECTOR, "#defect-list li").click()
        wait.until(ec.presence_of_element_located((By.ID, "panel-title")))
        driver.find_element(By.ID, "fit-all").click()  # the panel took room from the map: fit again
        time.sleep(1.5)  # thumbnails and the map's zoom animation
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()
    return out


# ------------------------------------------------------------------------------------------ up/down
def up(seed: int, port: int, model: Path | None = None) -> int:
    started = time.monotonic()
    paths = Paths()
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.root.chmod(0o700)  # its logs hold the tokens and the device password that provisioning printed
    background = Background(paths)
    timings: list[tuple[str, float]] = []

    def step(title: str):
        console.print(f"[bold cyan]›[/] {title}", soft_wrap=True)  # paths in it stay whole
        timings.append((title, time.monotonic()))

    # The previous demo's server held the port; another program's is found out before anything starts.
    if stopped := background.stop_all():
        console.print(f"  stopped the previous demo's {', '.join(stopped)}")
    if not services.port_is_free(port):
        raise DemoError(f"port {port} is taken by another program: free it or run with --port / ROADMON_DEMO_PORT")
    step("starting PostGIS and Mosquitto (scripts/services.py)")
    info = services.up()

    step(f"fresh database {DB_NAME}, migrations")
    prepare_database(paths)
    paths.server_toml.write_text(tomli_w.dumps(server_config(paths, info, port)), encoding="utf-8")
    run_logged(fleet_server(paths, "migrate"), paths.log("provision"), 120, "fleet-server migrate")

    step(f"provisioning vehicle {DEVICE_ID} and viewer/manager tokens")
    provision_device(paths)
    tokens = {role: create_token(paths, role, f"demo-{role}") for role in ("viewer", "manager")}
    paths.tokens.write_text(json.dumps(tokens, indent=2))
    paths.tokens.chmod(0o600)

    step(f"simulated drive (seed {seed}; generated once, then reused)")
    with console.status("rendering the drive (a minute or three, once)…"):
        drive = ensure_drive(paths, seed)

    ensure_broker()
    step(f"fleet server on http://127.0.0.1:{port} (API + ingest; logs in {shown(paths.root)})")
    background.start("server", fleet_server(paths, "serve", "--workers", "1"))
    wait_for_api(port, tokens["viewer"], background)

    step("replaying the drive through the agent pipeline, uplink to the broker")
    shutil.rmtree(paths.agent_state, ignore_errors=True)
    paths.agent_state.mkdir(parents=True)
    agent_config(paths, drive, info, model=model)
    with console.status("detecting, tracking, geolocating, sending (a minute or two)…"):
        report = replay(paths, drive)

    step("waiting until the server has confirmed every event")
    counts = wait_confirmed(paths.outbox, timeout_s=120)
    if services.running_broker_died():
        console.print("[red]Mosquitto stopped during the demo[/]: Debian's 2.0.11 crashes now and then, mostly right "
                      "after it re-reads its logins (its own log says nothing; the kernel log shows a segfault). "
                      "The agent keeps what it could not send; run `make demo` again.")
    defects = wait_for_defects(port, tokens["viewer"])

    timings.append(("done", time.monotonic()))
    truth = json.loads((drive / "defects.geojson").read_text(encoding="utf-8"))
    scores = {cls: score_geolocation(points_of(truth, cls, visible_only=True), points_of(defects, cls))
              for cls in SCORED_CLASSES}
    print_summary(counts, defects, scores, report, port, tokens, time.monotonic() - started)
    unconfirmed = sum(c.get("pending", 0) + c.get("sent", 0) for c in counts.values())
    return 0 if unconfirmed == 0 else 1


def wait_for_defects(port: int, token: str, settle_s: float = 3.0, timeout_s: float = 30.0) -> dict[str, Any]:
    """The defect map once it stops changing (aggregation may trail the acknowledgements a little)."""
    url = f"http://127.0.0.1:{port}/api/v1/defects?limit=5000"
    deadline = time.monotonic() + timeout_s
    last, stable_since = None, time.monotonic()
    while True:
        current = http_json(url, token)
        signature = json.dumps(current.get("features", []), sort_keys=True)
        if signature != last:
            last, stable_since = signature, time.monotonic()
        if time.monotonic() - stable_since >= settle_s or time.monotonic() > deadline:
            return current
        time.sleep(0.5)


def print_summary(
    counts: dict[str, dict[str, int]],
    defects: dict[str, Any],
    scores: dict[str, GeoScore],
    report: dict[str, Any],
    port: int,
    tokens: dict[str, str],
    elapsed_s: float,
) -> None:
    events = counts["event"]
    sent = sum(events.values())
    by_class: dict[str, int] = {}
    for feature in defects.get("features", []):
        cls = (feature.get("properties") or {}).get("class", "?")
        by_class[cls] = by_class.get(cls, 0) + 1

    table = Table(title="road-monitor demo", show_header=False, title_style="bold")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("events written by the agent", str(sent))
    table.add_row("events confirmed by the server", f"{events.get('confirmed', 0)} of {sent}")
    table.add_row(
        "coverage records confirmed", f"{counts['coverage'].get('confirmed', 0)} of {sum(counts['coverage'].values())}"
    )
    table.add_row("defects on the map", ", ".join(f"{n} {c}" for c, n in sorted(by_class.items())) or "0")
    for cls, score in scores.items():
        if not score.truth and not score.strays:
            continue
        table.add_row(f"true {cls}s found", f"{score.found} of {score.truth} in view (within {MATCH_GATE_M:.0f} m)")
        if score.errors_m:
            table.add_row(f"{cls} geolocation error", f"median {score.median_m:.2f} m, max {score.max_m:.2f} m")
        table.add_row(f"{cls} defects with no true {cls} near", str(score.strays))
    if report.get("frames"):
        table.add_row("frames processed", str(report["frames"]))
    table.add_row("demo took", f"{elapsed_s:.0f} s")
    console.print(table)
    # Links are printed whole (no wrapping), so that a terminal can open them.
    console.print(f"\nDashboard (viewer):  [bold]http://127.0.0.1:{port}/#token={tokens['viewer']}[/]", soft_wrap=True)
    console.print(f"Dashboard (manager): http://127.0.0.1:{port}/#token={tokens['manager']}", soft_wrap=True)
    paths = Paths()
    console.print(f"Tokens are in {paths.tokens}; logs in {paths.root}/*.log; stop with `make demo-down`"
                  " (with the same ROADMON_* settings).", soft_wrap=True)
    # Without --config, status and doctor look for a real box's /etc/edge-agent/agent.toml.
    console.print(f"The demo's box: .venv/bin/edge-agent status --config {paths.agent_toml} (or doctor)",
                  soft_wrap=True)


def down(keep_services: bool) -> int:
    stopped = Background(Paths()).stop_all()
    console.print(f"stopped the demo's {', '.join(stopped)}" if stopped else "no demo server was running")
    if not keep_services:
        was_running = services.down()
        console.print(f"stopped {' and '.join(was_running)}" if was_running else
                      f"no local services were running for the state folder {services.STATE}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p_up = sub.add_parser("up", help="run the demo (idempotent)")
    p_up.add_argument("--seed", type=int, default=DEFAULT_SEED, help="simulated drive's seed")
    p_up.add_argument("--port", type=int, default=DEFAULT_PORT, help="dashboard/API port")
    p_up.add_argument("--model", type=Path, default=None, help="ONNX detector to use instead of the bundled one")
    p_shot = sub.add_parser("screenshot", help="save a picture of the running demo's dashboard")
    p_shot.add_argument("--port", type=int, default=DEFAULT_PORT, help="dashboard/API port")
    p_shot.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "dashboard.png")
    p_down = sub.add_parser("down", help="stop the demo server and the local services")
    p_down.add_argument("--keep-services", action="store_true", help="leave PostGIS and Mosquitto running")
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            return up(args.seed, args.port, args.model)
        if args.action == "screenshot":
            console.print(f"saved {screenshot(args.port, args.out)}")
            return 0
        return down(args.keep_services)
    except (DemoError, services.ServiceError) as exc:
        console.print(f"[bold red]demo:[/] {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
