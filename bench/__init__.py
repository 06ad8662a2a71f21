"""Benchmarks of vlmdata: throughput, memory and shard size against the processor floor and today's tools.

`make bench` runs `bench/run_all.py`, which writes BENCHMARKS.md. Every figure is a ratio against a baseline
measured in the same run, so that a busy or slow machine changes both sides alike.
"""

from vlmdata.executors import openmp_threads_wait_passively

# As the `vlmdata tokenize` command does, before any script imports torch: every side of a comparison runs so.
openmp_threads_wait_passively()
