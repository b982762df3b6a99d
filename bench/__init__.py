"""The benchmark (`make bench`, `forecast bench`): scenarios on private Redis servers, a table.

A leaf above the product: it may import `forecast`, `worker` and `trainer`; none of them
imports it. Results go to `bench/results/` (ignored by git).
"""
