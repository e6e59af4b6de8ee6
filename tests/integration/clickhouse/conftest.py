"""ClickHouse for these tests: the suite-wide fixtures in ``tests/conftest.py``.

chDB lets a process open a single data folder, ever: ``clickhouse_root`` is the one connection
of the session, ``ch_client`` a fresh migrated database per test and ``lt_store`` the long-term
store on it. With ``SCHEDULES_TEST_CLICKHOUSE_URL`` set (``http://user:pass@host:8123``) the
same tests run against that ClickHouse server instead.
"""

SERVER_URL_ENV = "SCHEDULES_TEST_CLICKHOUSE_URL"
