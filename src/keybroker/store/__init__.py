"""Storage: SQLAlchemy Core tables over SQLite (embedded default) or PostgreSQL. No HTTP here."""

from keybroker.store import _schema as tables
from keybroker.store._engine import Store, translate_db_error

__all__ = ["Store", "tables", "translate_db_error"]
