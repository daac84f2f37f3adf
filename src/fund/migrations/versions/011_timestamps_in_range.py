"""Every stored timestamp is one the service can show: year 1 to 9999, in UTC.

PostgreSQL keeps times from 4713 BC to 294276 AD, and ``infinity``; Python's ``datetime``,
which every page, cursor and export renders through, only years 1 to 9999. A row written
outside the API with a time beyond those (a BC date from an import, ``infinity``, or
``0001-01-01 00:30+01``, which is year 0 in UTC) made every page that reached it a 500,
and a cursor walk could not get past it (black-box probe, 2026-11-29). The database now
refuses such a row, as it refuses any other value the schema has no place for.

Added ``NOT VALID``, then validated outside the migration's transaction: the check of the
existing rows (a scan, about a second per million entries) holds a lock that lets reads and
writes go on, not the ``ACCESS EXCLUSIVE`` lock of the ``ALTER TABLE`` itself. A database
that holds such a row already fails the validation, naming the constraint: correct the row
(or, for ``audit_logs``, which refuses updates, contact whoever owns the trail), then run
``fund db upgrade`` again.

Revision ID: 011
Revises: 010
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "011"
down_revision: str | None = "010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RANGE = "BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00'"
CHECKS = {
    "users": ("ck_users_times_in_range", f"created_at {RANGE} AND updated_at {RANGE}"),
    "audit_logs": ("ck_audit_logs_timestamp_in_range", f'"timestamp" {RANGE}'),
}


def upgrade() -> None:
    with op.get_context().autocommit_block():
        for table, (name, condition) in CHECKS.items():
            # An interrupted run may have added it, not validated: start clean.
            op.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}")
            op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({condition}) NOT VALID")
            op.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")


def downgrade() -> None:
    for table, (name, _) in CHECKS.items():
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
