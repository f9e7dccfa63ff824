"""A small client for the road-monitor fleet server's `POST /v1/detections` (the deployment guide's SDK API).

    api = RoadMonitorAPI(api_key="rmt_...", base_url="https://fleet.example.org/v1")
    receipt = api.submit_detections(device_id="phone-1", gps=(12.9716, 77.5946, 5.0),
                                    detections=[{"bbox": [100, 150, 250, 300], "class": "pothole",
                                                 "confidence": 0.87}])

Every submission is written to the on-disk queue (one SQLite file per server in the user's data directory,
or `queue_path=`) before it is sent and leaves it only when the server has it (202, or 409: it already had
it), so a phone in a tunnel or an app that restarts loses nothing: `flush()` sends what waits, oldest first.
The server derives the event ids from the body, so sending a body twice never doubles it.
"""

from road_monitor_client.client import CredentialsRefused, Receipt, Refused, RoadMonitorAPI
from road_monitor_client.queue import OfflineQueue, default_queue_path

__all__ = ["CredentialsRefused", "OfflineQueue", "Receipt", "Refused", "RoadMonitorAPI", "default_queue_path"]
