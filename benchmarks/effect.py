"""InDistill's effect, measured fairly: the pre-registered study (protocol.md beside its results), now a preset of
`indistill study` (the same runs, options, seeds and scores as the script that ran it before; one machinery).

    python benchmarks/effect.py --preset fmnist            # = indistill study --preset effect-fmnist -o benchmarks/results/effect-fmnist
    python benchmarks/effect.py --preset smoke             # seconds, synthetic data
    python benchmarks/effect.py --preset fmnist --protocol # write protocol.md (+ protocol.json) only
    python benchmarks/effect.py --preset fmnist --report   # rebuild results.* from the finished runs

The design (arms, comparisons, the gap check, the keep-flow pilot) is `indistill_cli/stages/study_presets.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from preset_script import main  # noqa: E402

if __name__ == "__main__":
    main("effect", {"fmnist": "effect-fmnist", "paper": "effect-paper", "smoke": "effect-smoke"}, "fmnist",
         {"fmnist": "effect-fmnist", "paper": "effect-paper", "smoke": "effect-smoke"})
