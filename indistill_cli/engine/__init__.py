"""The training engine: the loop (`loop.Engine`), optimiser and lr plan (`schedule`, `optim`), resumable
state (`resume`, `loop_state`), the non-finite guard (`guard`), per-epoch work (`epoch`) and where a run
executes (`runtime`: device, precision, DDP, seeding).

Kept import-free: the CLI reads `schedule.OptimConfig`'s option declarations without importing torch.
"""
