"""Make audit_logs append-only in the database itself.

UPDATE is refused unless the only change is ``is_deleted`` going from false to
true; DELETE is refused by a row trigger and TRUNCATE, which skips row
triggers, by a statement trigger. This holds for every role that can neither
disable triggers nor drop the table: the application role must not own the
table, its schema or the database, nor be a superuser (docs/AUDIT.md gives the
GRANTs).

Revision ID: 003
Revises: 002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "003"
down_revision: str | None = "002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION audit_logs_guard_update() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF OLD.is_deleted = false AND NEW.is_deleted = true
               AND (to_jsonb(NEW) - 'is_deleted') = (to_jsonb(OLD) - 'is_deleted') THEN
                RETURN NEW;
            END IF;
            RAISE EXCEPTION 'audit_logs is append-only: only is_deleted may go from false to true'
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION audit_logs_refuse_removal() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_logs is append-only: % is refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_logs_guard_update BEFORE UPDATE ON audit_logs "
        "FOR EACH ROW EXECUTE FUNCTION audit_logs_guard_update()"
    )
    op.execute(
        "CREATE TRIGGER audit_logs_refuse_delete BEFORE DELETE ON audit_logs "
        "FOR EACH ROW EXECUTE FUNCTION audit_logs_refuse_removal()"
    )
    op.execute(
        "CREATE TRIGGER audit_logs_refuse_truncate BEFORE TRUNCATE ON audit_logs "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_logs_refuse_removal()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER audit_logs_refuse_truncate ON audit_logs")
    op.execute("DROP TRIGGER audit_logs_refuse_delete ON audit_logs")
    op.execute("DROP TRIGGER audit_logs_guard_update ON audit_logs")
    op.execute("DROP FUNCTION audit_logs_refuse_removal()")
    op.execute("DROP FUNCTION audit_logs_guard_update()")
