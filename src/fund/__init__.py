"""Fund backend: accounts, roles and an append-only audit trail, fast at millions of rows."""

__version__ = "0.1.0"
