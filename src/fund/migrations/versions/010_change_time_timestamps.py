"""Timestamps are the time a row is written, not the time its transaction began.

Until this revision ``audit_logs.timestamp`` and ``users.created_at``/``updated_at``
defaulted to ``now()``: the start of the transaction. A change waits for its row's lock
after its transaction began, so of two concurrent changes to one user the one that began
first could be applied second: its entry then carried the older timestamp, and the trail
read newest first (``timestamp DESC, id DESC``) showed the changes out of the order they
were applied, each entry's ``old`` not the ``new`` before it; ``updated_at`` could go
back in time. ``clock_timestamp()`` is read when the statement writes the row, after any
wait for its lock: the entries of one resource, and its ``updated_at``, follow the order
its changes were applied. (Black-box probe, 2026-11-29: ten concurrent renames of one
user, four trials in five out of order.) A new user's ``created_at`` and ``updated_at``
default to ``statement_timestamp()``, one value for the whole ``INSERT``, so they stay equal
on creation (two ``clock_timestamp()`` calls could differ by a microsecond); a change sets
``updated_at`` to ``clock_timestamp()`` (``fund.models.User``).

Only the column defaults change: no row is rewritten, and the entries already written
keep their timestamps.

Revision ID: 010
Revises: 009
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "010"
down_revision: str | None = "009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _defaults(entry: str, user: str) -> None:
    op.execute(f'ALTER TABLE audit_logs ALTER COLUMN "timestamp" SET DEFAULT {entry}')
    op.execute(
        f"ALTER TABLE users ALTER COLUMN created_at SET DEFAULT {user},"
        f" ALTER COLUMN updated_at SET DEFAULT {user}"
    )


def upgrade() -> None:
    _defaults("clock_timestamp()", "statement_timestamp()")


def downgrade() -> None:
    _defaults("now()", "now()")
