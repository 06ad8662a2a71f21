"""Benchmarks of vlmdata: throughput, memory and shard size against the processor floor and today's tools.

`make bench` runs `bench/run_all.py`, which writes BENCHMARKS.md. Every figure is a ratio against a baseline
measured in the same run, so that a busy or slow machine changes both sides alike.
"""
