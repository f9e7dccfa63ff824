"""What is in a frame: the ONNX detector and the model it runs.

`manifest` reads a model's manifest, `session` opens ONNX Runtime, `letterbox` fits frames to the input,
`decode` and `nms` turn raw outputs into boxes, `detector` ties them together with the per-class working
thresholds, `model_update` installs and checks a model sent by the fleet server.
May import: edge_agent.config, edge_agent.health, edge_agent.durable (files that survive a power cut),
roadmon_contract. Nothing else of the agent.
"""
