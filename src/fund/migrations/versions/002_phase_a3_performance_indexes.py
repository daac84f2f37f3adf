"""Performance indexes: every list query answered by an index in its sort order.

The eight names come from the seed plan (operators look for them). Each one
ends in the page's sort key and the id tie-breaker, so that
``WHERE <filter> ORDER BY <key> DESC, id DESC LIMIT n`` is a forward index scan
that stops after n rows, and the keyset predicate ``(key, id) < (…)`` is an
index condition. Beyond the eight, the API also needs the bare sort orders and
the actor lookup (``audit_logs.user_id``).

Revision ID: 002
Revises: 001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "002"
down_revision: str | None = "001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (name, table, columns); a DESC key after the filter columns keeps the page order.
INDEXES: tuple[tuple[str, str, str], ...] = (
    ("idx_users_role", "users", "role, created_at DESC, id DESC"),
    ("idx_users_created_at_desc", "users", "created_at DESC, id DESC"),
    ("idx_users_role_is_active", "users", "role, is_active, created_at DESC, id DESC"),
    ("idx_users_created_at_is_active", "users", "is_active, created_at DESC, id DESC"),
    ("idx_audit_logs_resource_id", "audit_logs", "resource_id, timestamp DESC, id DESC"),
    ("idx_audit_logs_action", "audit_logs", "action, timestamp DESC, id DESC"),
    (
        "idx_audit_logs_resource_type_timestamp",
        "audit_logs",
        "resource_type, timestamp DESC, id DESC",
    ),
    ("idx_audit_logs_is_deleted_timestamp", "audit_logs", "is_deleted, timestamp DESC, id DESC"),
    # Beyond the plan's eight:
    ("idx_audit_logs_timestamp", "audit_logs", "timestamp DESC, id DESC"),
    ("idx_audit_logs_user_id_timestamp", "audit_logs", "user_id, timestamp DESC, id DESC"),
)


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.execute(f"CREATE INDEX {name} ON {table} ({columns})")


def downgrade() -> None:
    for name, _table, _columns in reversed(INDEXES):
        op.execute(f"DROP INDEX {name}")
