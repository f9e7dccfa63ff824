"""An ONNX Runtime session on the best execution provider that is installed and actually starts.

The configured providers are tried in order (TensorRT and CUDA on a Jetson, OpenVINO on Intel, CPU
everywhere); one that is missing is skipped, and one that fails to start (a missing CUDA library, say)
drops to the next, with the reason logged. CPU is always the last resort.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort

from edge_agent.detect.manifest import ModelError

log = logging.getLogger(__name__)
CPU = "CPUExecutionProvider"


def provider_chain(preferred: list[str]) -> list[str]:
    available = set(ort.get_available_providers())
    chain = [p for p in preferred if p in available and p != CPU]
    skipped = [p for p in preferred if p not in available]
    if skipped:
        log.debug("execution providers not installed here: %s", ", ".join(skipped))
    return [*chain, CPU]


def open_session(path: Path, preferred: list[str], threads: int = 0) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    chain = provider_chain(preferred)
    last: Exception | None = None
    for i, provider in enumerate(chain):
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=chain[i:])
        except Exception as exc:  # ORT raises its own exception types per failure kind
            last = exc
            if _not_a_model(exc):
                break
            if i + 1 < len(chain):  # the last one failing is the model's problem, said once below
                log.warning("execution provider %s failed to start (%s); trying the next one", provider, _short(exc))
            continue
        return session
    raise ModelError(f"{path} could not be loaded as an ONNX model: {_short(last)}")


def _not_a_model(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("protobuf", "invalid_graph", "invalid model", "no graph", "model_path"))


def _short(exc: Exception | None) -> str:
    """ONNX Runtime's first line, shortened in the middle: its cause comes last ("... Opset 30 is under
    development"), after a long C++ signature."""
    text = str(exc).strip().splitlines()[0] if exc else "unknown error"
    return text if len(text) <= 520 else f"{text[:100]} … {text[-400:]}"
