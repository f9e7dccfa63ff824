#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian/Ubuntu machine: the Debian packages for the local
# PostGIS, Mosquitto and the headless browser, then the Python packages into .venv.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${EXTRAS:-edge,lab,server,dev}"

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_passwd >/dev/null 2>&1 || need_apt+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql-15)
ls /usr/share/postgresql/*/extension/postgis.control >/dev/null 2>&1 || need_apt+=(postgresql-15-postgis-3)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck)
# The Kotlin/JVM client SDK (clients/kotlin) is built and tested with Debian's compiler, JDK and JUnit 5.
command -v kotlinc >/dev/null 2>&1 || need_apt+=(kotlin)
command -v javac >/dev/null 2>&1 || need_apt+=(openjdk-17-jdk-headless)
[ -f /usr/share/java/junit-platform-console-standalone.jar ] || need_apt+=(junit5)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "bootstrap: missing Debian packages: ${need_apt[*]} (run as root or: sudo apt-get install ${need_apt[*]})" >&2
    exit 1
  fi
  echo "bootstrap: installing Debian packages: ${need_apt[*]}"
  # Another apt (unattended-upgrades on a fresh machine, a second checkout's bootstrap) may hold the lock: wait.
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    "${need_apt[@]}" >/dev/null
fi
# The packaged mosquitto service would take port 1883; ours runs on its own port, so leave it alone.

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=".venv/.installed-${EXTRAS//,/-}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[${EXTRAS}]"
  touch "$stamp"
fi
# The Python client SDK (its own small package), tested against the server.
.venv/bin/python -c "import road_monitor_client" 2>/dev/null || .venv/bin/python -m pip install -q -e clients/python
