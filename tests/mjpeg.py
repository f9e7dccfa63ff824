"""A live MJPEG camera over HTTP on loopback, as an IP camera streams: multipart JPEG at a frame rate."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np


@contextmanager
def mjpeg_camera(jpeg: np.ndarray, fps: float, frames: int, port: int = 0) -> Iterator[str]:
    """Serve JPEG (encoded bytes) FRAMES times at FPS to each client (on PORT, 0: any free one); yields the
    stream's URL."""

    class Mjpeg(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            try:
                for _ in range(frames):
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                     + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg.tobytes() + b"\r\n")
                    time.sleep(1 / fps)
            except OSError:
                pass

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Mjpeg)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/video.mjpg"
    finally:
        server.shutdown()
