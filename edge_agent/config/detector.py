"""Detector settings (owned by the detector modules)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from roadmon_contract.config_base import Section

MAX_THREADS = 64
DEFAULT_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider",
                     "CPUExecutionProvider"]


class DetectorConfig(Section):
    model: str = Field("bundled", description="Path of the .onnx model (relative: beside the config file), "
                                                   "or 'bundled' for the shipped one")
    manifest: str | None = Field(None, description="Sidecar manifest JSON (classes, sha256, card data); default: "
                                                   "<model stem>.manifest.json beside the model, when present; "
                                                   "a relative path is taken beside the config file")
    score_threshold: float = Field(0.35, ge=0, le=1,
                                   description="Minimum detection score kept, for classes without a working "
                                               "threshold of their own; set here, it overrides the model "
                                               "manifest's class_thresholds")
    class_thresholds: dict[str, float] = Field(
        default_factory=dict, description="Minimum score per class name (e.g. {crack = 0.3}); overrides both "
                                          "score_threshold and the manifest's class_thresholds for that class")
    iou_threshold: float = Field(0.5, gt=0, le=1, description="IoU above which NMS drops the weaker box (per class)")
    max_detections: int = Field(100, ge=1, le=10000, description="At most this many detections per frame")
    providers: list[str] = Field(default_factory=lambda: list(DEFAULT_PROVIDERS),
                                 description="ONNX Runtime execution providers in order of preference; the "
                                             "ones not installed are skipped, CPU is always the last resort")
    threads: int = Field(0, ge=0, le=MAX_THREADS,
                         description="Intra-op threads for inference; 0 lets ONNX Runtime decide")
    input_size: int = Field(0, ge=0, le=4096, description="Square input size for models with a dynamic input "
                                                          "shape; 0 = the model's metadata (imgsz), else 640")
    layout: Literal["auto", "yolov5", "yolov8", "end2end"] = Field(
        "auto", description="Output layout; auto recognises it from the output shape and metadata")
    box_units: Literal["auto", "pixels", "fractions"] = Field(
        "auto", description="Units of the model's output boxes: input pixels (YOLO exports) or fractions of the "
                            "input (TensorFlow/TFLite conversions); auto tells them apart at load")
    class_names: list[str] | None = Field(None, min_length=1,
                                          description="Class names in class-id order for a model that names "
                                                      "none (overrides the manifest and the ONNX metadata)")
    mirror_pass: bool = Field(False, description="Also look at each frame mirrored left to right and fuse both "
                                                 "passes' boxes: vehicle-view AP50 +2-3 points for twice the "
                                                 "inference time (docs/model.md); for a box with time to spare")
    sanity_check: bool = Field(True, description="Refuse a model whose scores are all zero on a test pattern "
                                                 "and a sample image at load (broken INT8 exports do that)")

    @field_validator("class_names")
    @classmethod
    def _names_unique(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            twice = sorted({n for n in v if v.count(n) > 1})
            if twice:  # two classes of one name would pool into one and lose the other's boxes
                raise ValueError(f"class names must differ: {', '.join(twice)} given more than once")
        return v

    @field_validator("class_thresholds")
    @classmethod
    def _scores_in_range(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: t for k, t in v.items() if not 0 <= t <= 1}
        if bad:
            raise ValueError(f"class thresholds must lie in 0..1: {bad}")
        return v
