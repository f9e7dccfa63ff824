"""Command groups of `edge-agent`. Each module has `register(app)`; heavy imports stay inside commands
so that `edge-agent --help` starts fast on a Pi."""
