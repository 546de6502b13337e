"""Benchmarks: zero-shot picks against Ray Tune HPO baselines (``python -m metallmix.bench``).

See ``metallmix.bench.run`` for the methods, modes and result fields, ``metallmix.bench.report`` for
the comparison table and plots, and docs/benchmarks.md for the latest numbers.
"""
