"""Metrics: accuracy and evaluation over a loader, retrieval (exact mAP, P@k, R@k), information-flow MSE."""

from indistill_cli.metrics.accuracy import agreement, classify, topk_correct  # noqa: F401
from indistill_cli.metrics.flow import flow_mse, mse  # noqa: F401
from indistill_cli.metrics.retrieval import MAP_MODES, METRICS, nearest, retrieval_metrics  # noqa: F401
