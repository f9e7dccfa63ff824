"""The Kotlin/JVM client SDK (clients/kotlin): compiled with Debian's kotlinc and run with JUnit 5 against the
real server over HTTP. Skips when the toolchain is missing (`make install` installs it: kotlin, junit5, JDK)."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.server_fixtures import count, make_cfg, serve_api, token
from tests.test_phone_detections import JPEG

ROOT = Path(__file__).resolve().parent.parent
SDK = ROOT / "clients" / "kotlin"
JARS = Path("/usr/share/java")
TEST_JARS = ["junit-jupiter-api.jar", "apiguardian-api.jar", "opentest4j.jar"]
CONSOLE = JARS / "junit-platform-console-standalone.jar"
KOTLINC, JAVA = shutil.which("kotlinc"), shutil.which("java")
MISSING = [n for n, ok in (("kotlinc", KOTLINC), ("java", JAVA), (str(CONSOLE), CONSOLE.is_file()),
                           ("kotlin-stdlib.jar", (JARS / "kotlin-stdlib.jar").is_file())) if not ok]

__all__ = ["make_cfg"]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"Kotlin toolchain missing ({', '.join(MISSING)}); "
                                                      "Debian packages kotlin, junit5, openjdk-17-jdk-headless")


@pytest.mark.services
def test_kotlin_sdk_against_the_real_server(make_cfg, tmp_path: Path) -> None:
    classes = tmp_path / "classes"
    # Both JVMs live seconds: the optimising JIT (C2) spends more than it gains there, so they stop at C1 (the
    # bytecode kotlinc writes and what JUnit runs are the same; kotlinc took 6 s, 4 s now). kotlinc's script uses
    # JAVA_OPTS instead of its own -Xmx256M -Xms32M, which are kept.
    short_lived = "-XX:TieredStopAtLevel=1"
    build_env = dict(os.environ, JAVA_OPTS=f"{os.environ.get('JAVA_OPTS', '-Xmx256M -Xms32M')} {short_lived}")
    build = subprocess.run([KOTLINC, str(SDK / "src" / "main" / "kotlin"), str(SDK / "src" / "test" / "kotlin"),
                            "-cp", ":".join(str(JARS / j) for j in TEST_JARS), "-d", str(classes)],
                           capture_output=True, text=True, timeout=600, env=build_env)
    assert build.returncode == 0, f"kotlinc failed:\n{build.stdout}\n{build.stderr}"
    cfg = make_cfg(api={"rate_limit_per_hour": 1000})
    dsn = cfg.database.resolve_dsn()
    env = dict(os.environ, ROADMON_TEST_TOKEN=token(dsn, "device", "device VEH_KT", device_id="VEH_KT"),
               ROADMON_TEST_DEVICE="VEH_KT", ROADMON_TEST_JPEG_B64=base64.b64encode(JPEG).decode())
    with serve_api(cfg) as url:
        env["ROADMON_TEST_URL"] = f"{url}/v1"
        run = subprocess.run([JAVA, short_lived, "-jar", str(CONSOLE), "--disable-banner", "--fail-if-no-tests",
                              "--details=tree", "-cp", f"{classes}:{JARS / 'kotlin-stdlib.jar'}",
                              "--select-class", "io.roadmonitor.sdk.RoadMonitorAPITest"],
                             capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, f"JUnit:\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    assert "7 tests successful" in run.stdout, run.stdout[-3000:]
    # What the SDK sent is on the server: three submissions (the resend stored once), one with a thumbnail.
    assert count(dsn, "SELECT count(*) FROM sightings WHERE device_id = 'VEH_KT'") == 3
    assert count(dsn, "SELECT count(*) FROM sightings WHERE device_id = 'VEH_KT' AND thumbnail IS NOT NULL") == 1
