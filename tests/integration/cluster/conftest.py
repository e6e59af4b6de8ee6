"""The session's Valkey Cluster (3 masters with a replica each) and a second plain Valkey."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from delayline.adapters.embedded import EmbeddedValkey
from tests.valkey_cluster import ValkeyCluster


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    """The session's 3-master cluster (tests isolate themselves by key prefix)."""
    cluster = ValkeyCluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def second_valkey(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    """Another plain Valkey beside the session's, for the several-servers layout."""
    server = EmbeddedValkey(tmp_path / "valkey2")
    server.start()
    yield server
    server.stop()
