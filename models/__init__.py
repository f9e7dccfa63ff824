"""Training, export and evaluation of the bundled detector. Run as `python -m models.train` (see docs/model.md)."""
