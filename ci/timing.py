"""Timing shared by the benchmark reference scripts (ci/torch_baseline.py,
ci/jax_layers_baseline.py): the median of timed calls after untimed warm-up calls."""
import statistics
import time


def median_ms(fn, warm, runs):
    """Median milliseconds of `runs` calls of `fn` after `warm` untimed ones. `fn` must wait for
    its own result (block_until_ready for JAX)."""
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3
