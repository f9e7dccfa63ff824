"""Off the road: measuring and preparing. `evaluate` scores a model on labelled images, `quantize` makes an
INT8 model, `drive_eval` and `gnss_eval` score a drive's placements and positions against truth, `sim`
renders drives with known defects and positions.
May import: any agent subsystem except runtime (the lab measures parts, the benches run the whole agent).
"""

# An INT8 model must be this much faster than its FP32 twin to be worth it (less is timing noise): `model
# quantize` chooses by it, `model bench` advises by it on a box that has no lab extra.
MIN_SPEEDUP = 1.05
