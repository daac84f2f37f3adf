"""Cache invalidations that could not reach Redis, shared by every worker process.

A write whose cache invalidation fails (Redis down, hung or unreachable from that
process) records the key here before it returns; every process reads this table
before it trusts Redis again, writes the tombstones itself, then deletes the rows
(docs/CACHING.md). The table is empty whenever Redis is healthy.

Revision ID: 005
Revises: 004
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "005"
down_revision: str | None = "004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE cache_invalidations (
            id bigint GENERATED ALWAYS AS IDENTITY,
            key text NOT NULL,
            failed_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_cache_invalidations PRIMARY KEY (id)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE cache_invalidations")
