"""The stages: one module per command over one small base (`base.Stage`), plus what several share
(`options.RunOptions`, `session`, `resolve`, `ce`). Kept import-free: the CLI reads `options` without
importing torch."""
