"""The pool profile's CPU latency from a per-block lookup table (`tans.workers.measure_archs.LatencyTable`)
against measuring each network whole, on the same architectures in the same run.

For N pool archs of the embedded default (pretrained base weights, 32 px, one torch thread):
the table's estimates, a direct measurement of each whole network (what profiling did before,
and what a job does), and a second direct measurement. Reported: how well the table agrees
with the first measurement (Spearman's rho, mean absolute % error), how well the two direct
measurements agree with each other (the measurement's own noise, the bar the table has to
clear), and the seconds each way costs for the whole pool.

    python bench/latency_table.py [--archs 40] [--image-size 32]

The last line is the figures as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", type=int, default=40)
    ap.add_argument("--image-size", type=int, default=32)
    args = ap.parse_args()

    import numpy as np
    import torch
    from scipy.stats import spearmanr

    from tans.workers.measure_archs import LATENCY_REPEATS, latency_table
    from tans.workers.networks import weights
    from tans.workers.networks.measure import measure_latency_ms
    from tans.workers.networks.ofa_space import arch_pool, build_subnet, build_supernet
    from tans.workers.networks.weights import read_state_dict

    torch.set_num_threads(1)
    supernet = build_supernet(weights.WIDTH)
    supernet.load_state_dict(read_state_dict(str(weights.shipped()[0]), None, "the shipped base weights"))
    archs = arch_pool(0, args.archs)
    cpu = torch.device("cpu")

    started = time.perf_counter()
    table = latency_table(supernet, args.image_size)
    table_s = time.perf_counter() - started
    estimated = np.array([table.estimate_ms(a) for a in archs])

    def measure_all() -> tuple[np.ndarray, float]:
        out, spent = [], 0.0
        for arch in archs:
            model = build_subnet(supernet, arch, num_classes=10).eval()
            clock = time.perf_counter()
            out.append(measure_latency_ms(model, args.image_size, cpu, LATENCY_REPEATS))
            spent += time.perf_counter() - clock
        return np.array(out), spent

    first, first_s = measure_all()
    second, _ = measure_all()

    def mape(a, b) -> float:
        return float(np.mean(np.abs(a - b) / b))

    print(
        json.dumps(
            {
                "archs": len(archs),
                "image_size": args.image_size,
                "threads": 1,
                "table_vs_measured_spearman": round(float(spearmanr(estimated, first)[0]), 3),
                "table_vs_measured_mape": round(mape(estimated, first), 4),
                "measured_vs_remeasured_spearman": round(float(spearmanr(second, first)[0]), 3),
                "measured_vs_remeasured_mape": round(mape(second, first), 4),
                "mean_latency_ms": {
                    "table": round(float(estimated.mean()), 3),
                    "measured": round(float(first.mean()), 3),
                },
                "table_seconds": round(table_s, 2),
                "direct_seconds_per_arch": round(first_s / len(archs), 4),
                "break_even_archs": round(table_s / (first_s / len(archs)), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
