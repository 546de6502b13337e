"""Benchmarks: zero-shot picks against Ray Tune HPO baselines (``python -m metallmix.bench``).

See ``metallmix.bench.run`` for the methods, modes and result fields, ``metallmix.bench.report`` for
the comparison table and plots, and docs/benchmarks.md for the latest numbers.
"""

RESULT_FILE = "bench_result.json"  # one per benchmark job, in its Hydra job folder
FORMAT_VERSION = 1  # of that file
