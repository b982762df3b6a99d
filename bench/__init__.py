"""Benchmarks that run the product end to end (quality: `bench.quality`)."""
