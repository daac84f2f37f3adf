"""Finer statistics on the searched columns, so ``GET /users?q=`` gets the right plan.

A substring search ordered newest first has two good plans: for a common term,
walk the ``created_at`` btree and stop after a page of matches; for a rare term,
collect the matches from the trigram indexes (migration 004) and sort only them.
The planner picks from its estimate of how many rows match, read off the column
histogram. At the default target (100 buckets, a 30k-row sample) one bucket is
1% of the table, so a rare term that happens to land in one looks common, and
the btree walk reads the whole table to find a page. 1000 buckets (a 300k-row
sample) bring that error down tenfold; the full name is searched through
``lower(full_name)``, whose statistics live on its expression index.

Revision ID: 006
Revises: 005
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "006"
down_revision: str | None = "005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEARCH_STATISTICS = 1000


def upgrade() -> None:
    op.execute(f"ALTER TABLE users ALTER COLUMN email SET STATISTICS {SEARCH_STATISTICS}")
    op.execute(
        f"ALTER INDEX idx_users_full_name_trgm ALTER COLUMN 1 SET STATISTICS {SEARCH_STATISTICS}"
    )


def downgrade() -> None:
    op.execute("ALTER INDEX idx_users_full_name_trgm ALTER COLUMN 1 SET STATISTICS -1")
    op.execute("ALTER TABLE users ALTER COLUMN email SET STATISTICS -1")
