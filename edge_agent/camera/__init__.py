"""Frames in: `capture` opens a V4L2/GStreamer/RTSP camera or a video file and always hands out the newest frame.

May import: edge_agent.config, edge_agent.health. Nothing else of the agent.
"""
