"""Files: the checkpoint format, atomic writes, history entries, the warmup->distill plan sidecar, plots.

The lowest layer above `errors`/`progress`: it imports nothing else from the package.
"""
