"""The running agent: `assemble` builds it from the config (one place, for `run`, `replay`, the demo and the
tests), `pipeline` moves each frame through detect -> perception -> link, `live` runs it on a camera under
systemd (`sdnotify`; `config_reload` serves cmd/config-reload), `replay` on a recorded drive (`replay_clock`
dates its frames).
May import: every agent subsystem (gnss, camera, detect, perception, link), config, health, calibration.
"""
