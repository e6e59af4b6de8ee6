"""A process's node id: stable for the owner of a data directory, or as configured."""

from __future__ import annotations

from pathlib import Path

from delayline.bootstrap import Application
from delayline.settings import load_settings


def test_a_process_owning_its_data_dir_has_a_node_id_that_outlives_it(tmp_path: Path) -> None:
    embedded = load_settings(data_dir=tmp_path / "a")
    first = Application(embedded).settings.node_id
    assert Application(embedded).settings.node_id == first  # the same after a restart
    assert Application(load_settings(data_dir=tmp_path / "b")).settings.node_id != first
    chosen = load_settings(data_dir=tmp_path / "a", node_id="mine")
    assert Application(chosen).settings.node_id == "mine"
