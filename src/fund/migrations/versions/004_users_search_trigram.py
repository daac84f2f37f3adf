"""Trigram indexes for ``GET /users?q=``: substring search on email and full name.

``ILIKE '%q%'`` cannot use a btree; a pg_trgm GIN index answers it at 1M rows.

Revision ID: 004
Revises: 003
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "004"
down_revision: str | None = "003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.execute("CREATE INDEX idx_users_email_trgm ON users USING gin (email gin_trgm_ops)")
    op.execute(
        "CREATE INDEX idx_users_full_name_trgm ON users USING gin (lower(full_name) gin_trgm_ops)"
    )


def downgrade() -> None:
    op.execute("DROP INDEX idx_users_full_name_trgm")
    op.execute("DROP INDEX idx_users_email_trgm")
    # Drop the extension unless something else in the database uses it too.
    op.execute(
        "DO $$ BEGIN DROP EXTENSION IF EXISTS pg_trgm; "
        "EXCEPTION WHEN dependent_objects_still_exist THEN NULL; END $$"
    )
