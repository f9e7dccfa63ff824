"""road-monitor vehicle agent: camera + GNSS + detector -> geolocated defect events -> outbox -> MQTT."""

import os

__version__ = "0.3.0"

# ONNX Runtime 1.29+ sends usage telemetry to Microsoft from Linux too (a persistent device id in ~/.cache and
# uploads of process, model and inference figures; onnxruntime PR 27379): a vehicle box on a metered, often
# private link must not. The variable is read once, when the runtime first starts, so it is set before any
# module of the agent imports onnxruntime. An operator who wants it sets ORT_DISABLE_TELEMETRY=0.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
