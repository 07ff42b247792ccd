"""Reproducible measurements of AioClock beside other schedulers.

Commands: ``python -m benchmarks.jitter``, ``python -m benchmarks.throughput`` and
``python -m benchmarks.scale`` (see benchmarks/README.md). Layering: the commands use
``_cli`` (options, run loop), ``_runner`` (one scenario subprocess), ``_measure`` and ``_stats``
(records to numbers), ``_report`` and ``_plots`` (table, JSON, PNG), ``_peers`` and ``_systems``
(which interpreters run what). ``scenarios/`` holds the scripts that run inside each system's
own interpreter and import nothing from here.
"""
