"""ClickHouse adapters: client, migrations, long-term tier (embedded chDB or a server)."""
