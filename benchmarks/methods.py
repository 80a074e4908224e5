"""InDistill in front of every KD method: the pre-registered methods study (protocol.md beside its results), now a
preset of `indistill study` (the same runs, options, seeds and scores as the script that ran it before).

    python benchmarks/methods.py --preset mini             # = indistill study --preset methods-mini -o benchmarks/results/methods
    python benchmarks/methods.py --preset fmnist           # full Fashion-MNIST, a reduced set of methods
    python benchmarks/methods.py --preset smoke            # seconds, synthetic data
    python benchmarks/methods.py --preset mini --protocol  # write protocol.md (+ protocol.json) only
    python benchmarks/methods.py --preset mini --report    # rebuild results.* from the finished runs

The design (rows, the scaled method recipes, arms, comparisons) is `indistill_cli/stages/study_presets.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from preset_script import main  # noqa: E402

if __name__ == "__main__":
    main("methods", {"mini": "methods-mini", "fmnist": "methods-fmnist", "smoke": "methods-smoke"}, "mini",
         {"mini": "methods", "fmnist": "methods/fmnist", "smoke": "methods-smoke"})
