"""Synthetic detections for tracker, event and pipeline tests: real `Detection`s, class pothole by default."""

from __future__ import annotations

from edge_agent.detect.detector import Detection


def Det(x1: float, y1: float, x2: float, y2: float, score: float,
        class_id: int = 0, class_name: str = "pothole") -> Detection:
    return Detection(x1, y1, x2, y2, score, class_id, class_name)
