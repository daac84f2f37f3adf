"""``users.token_version``: a password change or a deactivation ends the account's sessions.

Access tokens are signed and stateless: until this revision one stayed good for its whole
lifetime (``FUND_ACCESS_TOKEN_MINUTES``) after the account's password was changed, so a
stolen token outlived the password change meant to shut its thief out. Each token now
carries the version of its account it was issued at (claim ``ver``) and an id of its own
(``jti``); a password change and a deactivation raise the version, and authentication
refuses a token of another version. One token may outlive its version: the one a user
changed their own password with (``kept_token_id``), so the session that made the change
goes on while every other one ends. The account row is read on every request already
(cached), so the check costs nothing more.

Tokens issued before this revision carry no version and count as version 0, the column's
default: they stay good until they expire, as they would have.

``ADD COLUMN`` with a constant default rewrites no row (PostgreSQL 11+): instant on a
million accounts.

Revision ID: 009
Revises: 008
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "009"
down_revision: str | None = "008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE users ADD COLUMN token_version integer NOT NULL DEFAULT 0,"
        " ADD COLUMN kept_token_id text"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE users DROP COLUMN token_version, DROP COLUMN kept_token_id")
