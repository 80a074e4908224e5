"""Pruning: tap pairing, channel-importance criteria, pruning plans and the pruned teacher's targets. Uses
`models` (which rebuilds a structurally pruned model from its spec); models never import it."""

from indistill_cli.pruning.criteria import (CRITERIA, activation_importance, build_graph, find_producers,  # noqa: F401
                                            group_importance, group_producers, select_channels, tap_group)
from indistill_cli.pruning.pairing import check_pairs, pair_taps, parse_pair, pruned_pairs  # noqa: F401
from indistill_cli.pruning.plan import (KEEP_PREFIX, MODES, TapPlan, chained_model, check_method,  # noqa: F401
                                        plan_pruning, reconcile_shared_groups, structural_plan)
from indistill_cli.pruning.targets import FlowPair, Pair, StudentUpTo, pairs_from_teacher  # noqa: F401
