"""Benchmark harnesses behind ``fastdiffusion bench ...``."""
