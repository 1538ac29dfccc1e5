"""The SQL stores: PostgreSQL on asyncpg, SQLite on sqlite3, sharing their repositories
(`repository.py`), schema (`schema.py`) and URL parsing (`url.py`)."""
