#!/usr/bin/env bash
# Installs road-monitor as systemd services, from this checkout.
#
#   sudo systemd/install.sh agent  --device-id veh-042 --broker mqtt.example.org:8883 \
#        --mqtt-password-file ./veh-042.password --ca-file ./fleet-ca.pem
#   sudo systemd/install.sh server --workers 2
#   systemd/install.sh agent --dry-run ...      # print every step, change nothing (no root needed)
#
# Agent (Raspberry Pi OS bookworm, Jetson with JetPack 6, or any Debian/Ubuntu with systemd and Python 3.11+):
#   Debian packages, a system user `edge-agent` (sysusers.d; groups dialout, video), a venv under /opt/road-monitor,
#   /etc/edge-agent/agent.toml (written once, never overwritten), the MQTT password as a systemd credential,
#   the model under /var/lib/edge-agent/models (current.onnx -> <sha256>.onnx, what remote updates swap),
#   and edge-agent.service enabled.
# Server: the venv, /etc/fleet-server/server.toml, credentials, fleet-server.service and N ingest workers.
#
# Safe to run again: existing config, credentials and a newer (remotely updated) model are kept.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX=/opt/road-monitor
UNIT_DIR=/etc/systemd/system
ROLE=""
DRY_RUN=0
START=1
DEVICE_ID=""
DEVICE_ID_GIVEN=""
BROKER=""
MQTT_PASSWORD_FILE=""
CA_FILE=""
MODEL_KEY=""
MODEL_URL_PREFIX=""
MODEL=""
PYTHON=""
ORT_WHEEL=""
WORKERS=2
DSN_FILE=""
URL_BASE="https://fleet.example.org"
PLATFORM="${ROADMON_PLATFORM:-}"
DESTDIR=""      # --destdir: stage the files under this folder (an SD-card image) instead of /
NO_VENV=0

usage() {
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Options:
  --device-id ID              agent: the device id (its MQTT login); default: the host name (not with --destdir)
  --broker HOST[:PORT]        agent: the fleet's MQTT broker (default port 8883, TLS)
  --mqtt-password-file FILE   agent/server: the MQTT password (from `fleet-server device add`)
  --ca-file FILE              agent: CA certificate of the broker and of the fleet server's HTTPS
  --model FILE                agent: the .onnx model to place (default: the bundled model)
  --model-public-key FILE     agent: Ed25519 public key (PEM) that must have signed every pushed model;
                              without it a model update is trusted on the broker login alone
  --model-url-prefix URL      agent: download models only from URLs under this https prefix, e.g.
                              https://fleet.example.org/api/v1/models/ (redirects included)
  --onnxruntime-wheel FILE    agent: an onnxruntime(-gpu) wheel to use instead of PyPI's (Jetson)
  --python PATH               Python 3.11+ for the venv (default: the newest python3.1x found)
  --workers N                 server: ingest workers, 1-64 (default 2); worker N serves metrics on 9100+N
  --database-dsn-file FILE    server: the PostGIS connection string (with its password)
  --url-base URL              server: public HTTPS address devices fetch models from
  --prefix DIR                where the venv and docs go (default /opt/road-monitor)
  --no-start                  enable the units but do not start them now
  --destdir DIR               write every file under DIR (building an image): no packages, users,
                              ownership or systemctl; the paths inside the files stay the real ones
  --no-venv                   skip the venv (needed with --destdir: make it in the image's chroot or on the box)
  --dry-run                   print each step instead of doing it (a step that would fail, such as a
                              missing input file, is marked "! would fail" and the plan goes on; exit 2)
EOF
}

die() { echo "install.sh: $*" >&2; exit 2; }

# A step that cannot be done (an input file missing): a real run stops; a dry run says so and goes on, so the
# whole plan is shown first, and exits 2 at the end.
WOULD_FAIL=()
fail_step() {
  if [ "$DRY_RUN" = 1 ]; then
    echo "! would fail: $*"
    WOULD_FAIL+=("$*")
  else
    die "$*"
  fi
}

# Ingest workers on one host; each one's metrics port is 9100 + its number (fleet-server-ingest@.service).
MAX_WORKERS=64

while [ $# -gt 0 ]; do
  case "$1" in
    agent|server) ROLE="$1" ;;
    --device-id) DEVICE_ID="$2"; DEVICE_ID_GIVEN=1; shift ;;
    --broker) BROKER="$2"; shift ;;
    --mqtt-password-file) MQTT_PASSWORD_FILE="$2"; shift ;;
    --ca-file) CA_FILE="$2"; shift ;;
    --model) MODEL="$2"; shift ;;
    --model-public-key) MODEL_KEY="$2"; shift ;;
    --model-url-prefix) MODEL_URL_PREFIX="$2"; shift
                        [[ "$MODEL_URL_PREFIX" =~ ^https://[A-Za-z0-9._:/-]+/$ ]] \
                          || die "--model-url-prefix must be an https URL ending in / (letters, digits, . _ : - /)" ;;
    --onnxruntime-wheel) ORT_WHEEL="$2"; shift ;;
    --python) PYTHON="$2"; shift ;;
    --workers) WORKERS="$2"; shift ;;
    --database-dsn-file) DSN_FILE="$2"; shift ;;
    --url-base) URL_BASE="$2"; shift ;;
    --prefix) PREFIX="$2"; shift
              # Absolute and plain: the units name it (a relative one failed halfway; "&" broke the rewrite).
              [[ "$PREFIX" =~ ^/[A-Za-z0-9._/-]+$ ]] || die "--prefix must be an absolute path of letters, digits, . _ - /" ;;
    --no-start) START=0 ;;
    --destdir) DESTDIR="$(realpath -m "$2")"; shift ;;
    --no-venv) NO_VENV=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done
[ -n "$ROLE" ] || { usage >&2; die "say what to install: agent or server"; }
if ! [[ "$WORKERS" =~ ^[1-9][0-9]{0,2}$ ]] || [ "$WORKERS" -gt "$MAX_WORKERS" ]; then
  die "--workers must be a number from 1 to $MAX_WORKERS (ingest processes on this host), not '$WORKERS'"
fi
if [ -n "$DESTDIR" ] && [ "$NO_VENV" = 0 ]; then
  # A venv is bound to where it was made: its scripts start with "#!<destdir>/opt/...", and its python is this
  # host's interpreter. Built into an image it ran nowhere, after a "done".
  die "--destdir needs --no-venv: a venv made here does not run in the image (make it in the image's chroot or on the box)"
fi
if [ "$DRY_RUN" = 0 ] && [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
  die "run as root (sudo), or add --dry-run to see what it would do"
fi

# ------------------------------------------------------------------------------------------ helpers
# Every change goes through one of these, so that --dry-run shows exactly what a real run does.
# Paths given to them are the box's real paths; with --destdir they land under that folder instead.
run() {
  if [ "$DRY_RUN" = 1 ]; then echo "+ $*"; else "$@"; fi
}

# A change to the running system (packages, users, ownership, systemd): not made into a --destdir image.
sys_run() {
  if [ -n "$DESTDIR" ]; then echo "= skipped with --destdir: $*"; else run "$@"; fi
}

# inst [install options] SRC... DEST: coreutils install; owners are dropped for --destdir (no such users there).
inst() {
  local args=()
  while [ $# -gt 0 ]; do
    case "$1" in
      -o|-g) if [ -z "$DESTDIR" ]; then args+=("$1" "$2"); fi; shift ;;
      *) args+=("$1") ;;
    esac
    shift
  done
  if [ -n "$DESTDIR" ]; then  # every path argument that is absolute and not a source goes under DESTDIR
    local out=() a i=0 n=${#args[@]} dir_mode=0
    for a in "${args[@]}"; do [ "$a" = -d ] && dir_mode=1; done
    for a in "${args[@]}"; do
      i=$((i + 1))
      if [[ "$a" == /* ]] && { [ "$dir_mode" = 1 ] || [ "$i" = "$n" ]; }; then out+=("$DESTDIR$a"); else out+=("$a"); fi
    done
    args=("${out[@]}")
  fi
  run install "${args[@]}"
}

# exists PATH: does the box (or the image) have it?
exists() { [ -e "$DESTDIR$1" ] || [ -L "$DESTDIR$1" ]; }

# write_file PATH MODE OWNER < content: atomically, keeping an existing file when KEEP=1.
write_file() {
  local path="$1" mode="$2" owner="$3" content
  content="$(cat)"
  if [ "${KEEP:-0}" = 1 ] && exists "$path"; then
    echo "= keep $path (exists)"
    return
  fi
  if [ "$DRY_RUN" = 1 ]; then
    echo "+ write $path (mode $mode, owner $owner)"
    printf '%s\n' "$content" | sed 's/^/|   /'
    return
  fi
  local tmp
  tmp="$(mktemp "$(dirname "$DESTDIR$path")/.install.XXXXXX")"
  printf '%s\n' "$content" >"$tmp"
  chmod "$mode" "$tmp"
  [ -n "$DESTDIR" ] || chown "$owner" "$tmp"
  # On the disk before its name is: an installer's power cut left an empty agent.toml (hardening row 28).
  sync "$tmp"
  mv -f "$tmp" "$DESTDIR$path"
  sync "$(dirname "$DESTDIR$path")"
}

# copy_secret SRC DEST: root-only file that systemd hands to the service with LoadCredential=.
copy_secret() {
  local src="$1" dest="$2"
  if [ -z "$src" ]; then
    if exists "$dest" || [ "$DRY_RUN" = 1 ]; then echo "= keep $dest"; return; fi
    echo "install.sh: WARNING: no secret given for $dest; the service will not authenticate until it exists" >&2
    return
  fi
  [ -r "$src" ] || { fail_step "cannot read $src (for $dest)"; return; }
  inst -m 0600 -o root -g root "$src" "$dest"
}

detect_platform() {
  [ -n "$PLATFORM" ] && { echo "$PLATFORM"; return; }
  local model=""
  [ -r /proc/device-tree/model ] && model="$(tr -d '\0' </proc/device-tree/model)"
  if [ -e /etc/nv_tegra_release ] || [[ "$model" == *Jetson* ]]; then
    echo jetson
  elif [[ "$model" == *"Raspberry Pi"* ]]; then
    echo raspberry-pi
  else
    echo generic
  fi
}

pick_python() {
  if [ -n "$PYTHON" ]; then echo "$PYTHON"; return; fi
  local candidate
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return
    fi
  done
  echo ""
}

install_debian_packages() {
  local packages=("$@") missing=() p
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    sys_run apt-get update -qq
    sys_run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "= Debian packages present: ${packages[*]}"
  fi
}

make_venv() {
  local extra="$1" python venv="$PREFIX/venv"
  inst -d -m 0755 "$PREFIX" "$PREFIX/docs"
  run cp -r "$ROOT/docs/." "$DESTDIR$PREFIX/docs/"
  if [ "$NO_VENV" = 1 ]; then
    echo "= no venv (--no-venv): before the service starts, in the image's chroot or on the box, from a fresh copy"
    echo "  of this checkout (no build/ folder) or its wheel: python3 -m venv $venv && $venv/bin/pip install '<copy>[$extra]'"
    return
  fi
  python="$(pick_python)"
  if [ -z "$python" ]; then
    if [ "$DRY_RUN" = 1 ]; then python=python3.11; else
      die "no Python 3.11+ found; on Jetson (Ubuntu 22.04): apt-get install python3.11 python3.11-venv, or --python"
    fi
  fi
  echo "= python: $python"
  [ -x "$DESTDIR$venv/bin/python" ] || run "$python" -m venv "$DESTDIR$venv"
  run "$DESTDIR$venv/bin/python" -m pip install -q --upgrade pip
  if [ -n "$ORT_WHEEL" ]; then
    run "$DESTDIR$venv/bin/python" -m pip install -q "$ORT_WHEEL"
  fi
  # pip builds in the checkout's build/: a module deleted since the last install came back from there.
  run rm -rf "$ROOT/build"
  run "$DESTDIR$venv/bin/python" -m pip install -q "${ROOT}[${extra}]"
}

# link_command NAME: the venv's NAME on PATH, so that `sudo edge-agent doctor` as the docs write it works (sudo's
# secure_path has /usr/local/bin; the venv's bin is on no one's PATH).
link_command() {
  local name="$1"  # with --no-venv too: the link points where the venv will be
  inst -d -m 0755 /usr/local/bin
  run ln -sfn "$PREFIX/venv/bin/$name" "$DESTDIR/usr/local/bin/$name"
}

install_unit() {
  local name="$1" unit
  if [ "$PREFIX" = /opt/road-monitor ]; then
    inst -D -m 0644 -o root -g root "$ROOT/systemd/$name" "$UNIT_DIR/$name"
    return
  fi
  # The units name the default prefix: with --prefix they ran a venv that is not there.
  unit="$(mktemp)"
  sed "s#/opt/road-monitor/#$PREFIX/#g" "$ROOT/systemd/$name" > "$unit"
  inst -D -m 0644 -o root -g root "$unit" "$UNIT_DIR/$name"
  rm -f "$unit"
}

enable_units() {
  sys_run systemctl daemon-reload
  if [ "$START" = 1 ] && [ -z "$DESTDIR" ]; then
    run systemctl enable --now "$@"
  elif [ -n "$DESTDIR" ]; then
    local unit
    for unit in "$@"; do  # what `systemctl enable` does, for an image that has not booted yet
      local template="${unit/@*./@.}"
      run mkdir -p "$DESTDIR$UNIT_DIR/multi-user.target.wants"
      run ln -sfn "$UNIT_DIR/$template" "$DESTDIR$UNIT_DIR/multi-user.target.wants/$unit"
    done
  else
    run systemctl enable "$@"
  fi
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# ------------------------------------------------------------------------------------------- agent
place_model() {
  local state=/var/lib/edge-agent models sha manifest
  models="$state/models"
  [ -n "$MODEL" ] || MODEL="$ROOT/models/bundled/model.onnx"
  if [ -r "$MODEL" ]; then
    sha="$(sha256_of "$MODEL")"
  else
    fail_step "model not found: $MODEL (build it with 'make model' or pass --model FILE)"
    sha="<sha256>"
  fi
  inst -d -m 0750 -o edge-agent -g edge-agent "$state" "$models"
  # A model that came later by remote update stays; the installer only provides the first one.
  if exists "$models/current.onnx"; then
    echo "= keep $models/current.onnx -> $(readlink "$DESTDIR$models/current.onnx" 2>/dev/null || echo '?')"
    return
  fi
  inst -m 0640 -o edge-agent -g edge-agent "$MODEL" "$models/$sha.onnx"
  # The detector finds <stem>.manifest.json beside the link's target: name, version, classes, sha256.
  manifest="${MODEL%.onnx}.manifest.json"
  if [ -r "$manifest" ]; then
    inst -m 0640 -o edge-agent -g edge-agent "$manifest" "$models/$sha.manifest.json"
  fi
  run ln -sfn "$sha.onnx" "$DESTDIR$models/current.onnx"
  sys_run chown -h edge-agent:edge-agent "$models/current.onnx"
}

agent_config() {
  local host="${BROKER%%:*}" port="8883"
  [[ "$BROKER" == *:* ]] && port="${BROKER##*:}"
  [ -n "$host" ] || host="localhost"
  local ca_line="# ca_file = \"/etc/edge-agent/ca.pem\""
  [ -n "$CA_FILE" ] && ca_line="ca_file = \"/etc/edge-agent/ca.pem\""
  # Without a key, whoever holds the server's broker login can install any model on every box (docs/deploy.md).
  local key_line="# public_key = \"/etc/edge-agent/model-signing.pub.pem\"   (install.sh --model-public-key)"
  [ -n "$MODEL_KEY" ] && key_line="public_key = \"/etc/edge-agent/model-signing.pub.pem\""
  local prefix_line="# url_prefix = \"https://fleet.example.org/api/v1/models/\"   (install.sh --model-url-prefix)"
  [ -n "$MODEL_URL_PREFIX" ] && prefix_line="url_prefix = \"$MODEL_URL_PREFIX\""
  cat <<EOF
# road-monitor edge agent. Written by systemd/install.sh; edit freely, it is never overwritten.
# All keys: edge-agent config example. Check: edge-agent config check /etc/edge-agent/agent.toml

[device]
id = "$DEVICE_ID"
state_dir = "/var/lib/edge-agent"

[detector]
# install.sh placed the model here; remote model updates swap this link atomically.
model = "/var/lib/edge-agent/models/current.onnx"

[uplink]
host = "$host"
port = $port
$ca_line
# The password comes from the systemd credential mqtt-password (LoadCredential= in edge-agent.service).

[model_update]
$ca_line
$key_line
$prefix_line
EOF
}

install_agent() {
  local platform
  platform="$(detect_platform)"
  echo "= platform: $platform"
  if [ -z "$DEVICE_ID" ] && [ -n "$DESTDIR" ]; then
    # This host's name would be every box's id: one broker login, sessions taken over all day.
    die "--destdir needs --device-id (an image is one box's; docs/deploy.md, many boxes from one image)"
  fi
  [ -n "$DEVICE_ID" ] || DEVICE_ID="$(hostname -s)"
  [[ "$DEVICE_ID" =~ ^[A-Za-z0-9._-]{1,64}$ ]] || die "device id '$DEVICE_ID': use letters, digits, . _ - (max 64)"
  if [ -z "$BROKER" ] && ! exists /etc/edge-agent/agent.toml; then
    # An image built without it looked for its broker at localhost, after a "done".
    echo "install.sh: WARNING: no --broker: the box's config names localhost:8883 as its broker (uplink.host)" >&2
  fi

  # Only what the agent uses: v4l-utils for the camera hints doctor prints (v4l2-ctl). gpsd-clients pulled in
  # ~950 MB on a Pi OS Lite box (GTK, matplotlib, gcc) for tools nothing runs; libgl1 is for OpenCV builds with a
  # GUI, and the box's is headless.
  local packages=(python3-venv python3-pip v4l-utils)
  [ "$platform" = jetson ] && packages+=(python3.11 python3.11-venv)
  install_debian_packages "${packages[@]}"

  # The user (groups dialout, video) comes from a sysusers.d file: created now, or at an image's first boot.
  inst -D -m 0644 -o root -g root "$ROOT/systemd/edge-agent.sysusers.conf" /etc/sysusers.d/edge-agent.conf
  sys_run systemd-sysusers /etc/sysusers.d/edge-agent.conf
  make_venv edge
  link_command edge-agent

  inst -d -m 0755 -o root -g root /etc/edge-agent
  inst -d -m 0700 -o root -g root /etc/edge-agent/credentials
  local kept_id
  kept_id=""
  if [ -f "$DESTDIR/etc/edge-agent/agent.toml" ]; then
    kept_id="$(sed -n 's/^id = "\(.*\)"$/\1/p' "$DESTDIR/etc/edge-agent/agent.toml" | head -1)"
  fi
  if [ -n "$kept_id" ] && [ -n "$DEVICE_ID_GIVEN" ] && [ "$kept_id" != "$DEVICE_ID" ]; then
    # The config is kept as it is: its id and this run's password would not match (a common image's
    # placeholder id with the box's own login at first boot).
    die "/etc/edge-agent/agent.toml names device '$kept_id', not '$DEVICE_ID': set device.id in it (or remove it) first"
  fi
  if [ -n "$DESTDIR" ] && [ -z "$MQTT_PASSWORD_FILE" ] && ! exists /etc/edge-agent/credentials/mqtt-password; then
    die "--destdir needs --mqtt-password-file: an image's box cannot log in to the broker without it"
  fi
  agent_config | KEEP=1 write_file /etc/edge-agent/agent.toml 0644 root:root
  copy_secret "$MQTT_PASSWORD_FILE" /etc/edge-agent/credentials/mqtt-password
  if [ -n "$CA_FILE" ]; then
    if [ -r "$CA_FILE" ]; then
      inst -m 0644 -o root -g root "$CA_FILE" /etc/edge-agent/ca.pem
    else
      fail_step "cannot read $CA_FILE (for /etc/edge-agent/ca.pem)"
    fi
  fi
  if [ -n "$MODEL_KEY" ]; then
    if [ -r "$MODEL_KEY" ] && grep -q "BEGIN PUBLIC KEY" "$MODEL_KEY"; then
      inst -m 0644 -o root -g root "$MODEL_KEY" /etc/edge-agent/model-signing.pub.pem
    else
      fail_step "cannot read a PEM public key from $MODEL_KEY (for /etc/edge-agent/model-signing.pub.pem)"
    fi
  else
    echo "install.sh: WARNING: no --model-public-key: this box installs any model the server's broker login sends it (docs/deploy.md, signing)" >&2
  fi
  place_model

  install_unit edge-agent.service
  if [ "$platform" = jetson ]; then
    # The GPU's device nodes, for the CUDA/TensorRT execution providers.
    inst -d -m 0755 "$UNIT_DIR/edge-agent.service.d"
    write_file "$UNIT_DIR/edge-agent.service.d/jetson.conf" 0644 root:root <<'EOF'
[Service]
DeviceAllow=/dev/nvmap rw
DeviceAllow=char-nvhost* rw
DeviceAllow=char-nvgpu* rw
DeviceAllow=char-nvidia* rw
SupplementaryGroups=render
EOF
  fi
  if [ "$NO_VENV" = 0 ]; then
    run "$DESTDIR$PREFIX/venv/bin/edge-agent" config check "$DESTDIR/etc/edge-agent/agent.toml"
  fi
  enable_units edge-agent.service
  # A dry run with steps that would fail says so at the end instead (it said "done" just before).
  [ ${#WOULD_FAIL[@]} -gt 0 ] || echo "done: check the box with: sudo edge-agent doctor"
}

# ------------------------------------------------------------------------------------------ server
server_config() {
  cat <<EOF
# road-monitor fleet server. Written by systemd/install.sh; edit freely, it is never overwritten.
# All keys: fleet_server/example.toml. Secrets are systemd credentials: the units run in their credentials
# directory, so the relative names below are /run/credentials/<unit>/<name>.

[database]
dsn_file = "database-dsn"

[mqtt]
host = "127.0.0.1"
port = 1883
username = "roadmon-server"
password_file = "mqtt-password"

[devices]
# The broker's public TLS address, printed in the credentials that fleet-server device add shows:
# broker = "mqtt.example.org:8883"

[broker_files]
passwd_file = "/etc/mosquitto/passwd"
acl_file = "/etc/mosquitto/acl"
pid_file = "/run/mosquitto/mosquitto.pid"

[api]
host = "127.0.0.1"             # behind the TLS reverse proxy
port = 8080

[models]
dir = "/var/lib/fleet-server/models"
url_base = "$URL_BASE"
EOF
}

install_server() {
  install_debian_packages python3-venv python3-pip
  make_venv server
  link_command fleet-server
  inst -d -m 0755 -o root -g root /etc/fleet-server
  inst -d -m 0700 -o root -g root /etc/fleet-server/credentials
  server_config | KEEP=1 write_file /etc/fleet-server/server.toml 0644 root:root
  copy_secret "$DSN_FILE" /etc/fleet-server/credentials/database-dsn
  copy_secret "$MQTT_PASSWORD_FILE" /etc/fleet-server/credentials/mqtt-password
  install_unit fleet-server.service
  install_unit fleet-server-ingest@.service
  local units=(fleet-server.service) i
  for i in $(seq 1 "$WORKERS"); do units+=("fleet-server-ingest@$i.service"); done
  enable_units "${units[@]}"
}

[ "$DRY_RUN" = 1 ] && echo "= dry run: nothing is changed"
[ -n "$DESTDIR" ] && echo "= staging into $DESTDIR"
case "$ROLE" in
  agent) install_agent ;;
  server) install_server ;;
esac
# A technician often powers the box off right after installing: everything installed is on the disk first.
[ "$DRY_RUN" = 1 ] || sync
if [ ${#WOULD_FAIL[@]} -gt 0 ]; then
  printf 'install.sh: the dry run found %d step(s) that would fail:\n' "${#WOULD_FAIL[@]}" >&2
  printf '  %s\n' "${WOULD_FAIL[@]}" >&2
  exit 2
fi
