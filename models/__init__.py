"""Training, export and evaluation of the bundled detector (run as `python -m models.train`, see docs/model.md), and
the survey set's lane masks as the check of `edge-agent calibrate mount` (`python -m models.mount_eval`)."""
