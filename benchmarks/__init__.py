"""Benchmarks for overlays: every figure measured in the same run as its baseline, reported as a ratio.

    python -m benchmarks [all|attach|cli|limit] [--quick] [--n N ...]

Each benchmark is a module with ``NAME``, ``add_arguments(parser)`` and
``run(run, args, log) -> (rows, verdicts)``; heavy measurements run in a child
process through ``benchmarks.worker``. ``harness`` holds the shared parts:
namespaces and their cleanup, timing, statistics, the table and the JSON.
New benchmarks (published ports, ``overlays up``, VXLAN) are new modules added
to ``BENCHMARKS`` in ``__main__``.
"""
