"""Fixtures for the bwtf.ckpt tests: a localhost cluster of real TF processes.

The cluster itself lives in ckpt_cluster.py, which tests import by that name
(several test folders have a conftest.py, so `import conftest` is ambiguous).
"""
import pytest

from ckpt_cluster import LocalCluster, namespace_isolation_available


@pytest.fixture
def local_cluster():
    clusters = []

    def make(num_ps, readonly_dir=None):
        cluster = LocalCluster(num_ps, readonly_dir)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()


@pytest.fixture
def readonly_for_ps():
    if not namespace_isolation_available():
        pytest.skip("needs root and `unshare -m` with bind mounts to make model_dir "
                    "read-only for the ps tasks only")
