"""A private 3-master Redis Cluster on loopback (it lives in `forecast.redis_server`, where
the benchmark can use it too)."""

from forecast.redis_server import (
    BUS_OFFSET,
    LocalCluster,
    cluster_available,
    cluster_port,
    local_cluster,
)

__all__ = ["BUS_OFFSET", "LocalCluster", "cluster_available", "cluster_port", "local_cluster"]
