"""A private 3-master Redis Cluster on loopback (it lives in `testkit.cluster`, where
the benchmark can use it too)."""

from testkit.cluster import BUS_OFFSET, LocalCluster, cluster_available, cluster_port, local_cluster

__all__ = ["BUS_OFFSET", "LocalCluster", "cluster_available", "cluster_port", "local_cluster"]
