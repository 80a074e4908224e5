"""Time retrieval_metrics at a CIFAR/Fashion-MNIST-like scale, to catch slowdowns and memory blow-ups.

Default: 10k queries against a 60k database of 64-d random embeddings with 10 classes, on
CPU, exact mAP + P@100, cosine and euclidean. Prints the median seconds of --repeats runs
per metric and the process's peak RSS (which includes the ~256 MB chunk working set).

    python benchmarks/retrieval_speed.py [--queries 10000] [--database 60000] [--device cpu]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

try:
    from indistill_cli.metrics import retrieval_metrics
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from indistill_cli.metrics import retrieval_metrics


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--database", type=int, default=60_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=None, help="default: automatic (~256 MB)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser.parse_args()


def make_data(args: argparse.Namespace) -> tuple[torch.Tensor, ...]:
    """float32 embeddings, as a network would produce them; labels uniform over the classes."""
    gen = torch.Generator().manual_seed(0)
    queries = torch.randn(args.queries, args.dim, generator=gen)
    database = torch.randn(args.database, args.dim, generator=gen)
    q_labels = torch.randint(0, args.classes, (args.queries,), generator=gen)
    db_labels = torch.randint(0, args.classes, (args.database,), generator=gen)
    return queries, q_labels, database, db_labels


def peak_rss_mib() -> float:
    """Peak resident set size; ru_maxrss is KiB on Linux and bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def time_metric(
    data: tuple[torch.Tensor, ...], metric: str, args: argparse.Namespace
) -> tuple[float, float, dict]:
    """Median wall and CPU seconds per run; CPU time (all threads) is steadier on a busy machine."""
    walls, cpus, result = [], [], {}
    for _ in range(args.repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = retrieval_metrics(
            *data, metric=metric, ks=(100,), map_mode="exact", chunk_size=args.chunk_size, device=args.device
        )
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), result


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = make_data(args)
    print(
        f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads; "
        f"{args.queries} queries x {args.database} database, {args.dim}-d, {args.classes} classes; "
        f"median of {args.repeats}"
    )
    for metric in ("cosine", "euclidean"):
        wall, cpu, result = time_metric(data, metric, args)
        print(
            f"{metric:9s} {wall:8.2f} s/run (CPU {cpu:.2f} s)   map={result['map']:.4f} "
            f"P@100={result['precision@100']:.4f}   peak RSS so far {peak_rss_mib():.0f} MiB"
        )
    print(f"peak RSS: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
