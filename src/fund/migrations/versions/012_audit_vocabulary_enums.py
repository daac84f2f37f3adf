"""``audit_logs.action`` and ``resource_type`` become PostgreSQL enums: a closed vocabulary.

An audit trail's actions and resource types are a closed set: the API writes only the labels
of ``fund.models.Action`` and ``ResourceType`` and validates its filters against them.
As ``varchar COLLATE "C"`` (migration 007) the columns took any text a role that may
``INSERT`` cared to write; as the enums ``audit_action`` (``CREATE``, ``UPDATE``, ``DELETE``,
``LOGIN``, ``LOGIN_FAILED``) and ``audit_resource_type`` (``user``, ``audit_log``) the
database refuses any other value (``invalid input value for enum``, SQLSTATE 22P02). The
API does not change: an enum reads and writes as its label's text, in JSON, CSV and filters.

A fixed-width key also builds its index faster: an enum is four bytes, so the sort reaches
``timestamp`` at a cached offset instead of walking a varlena, and with five or two values
nearly every comparison goes on to it. On the 10M seeded entries, one connection,
``maintenance_work_mem`` 1536MB: ``(action, "timestamp" DESC, id DESC)`` 16.3 s and 13.6 s
as text, 7.8 s and 7.3 s as an enum; ``(resource_type, …)`` 8.7 s against 5.3 s. That is
time off every seed of the benchmark's data (docs/SEEDING.md).

**This rewrites the table under an ACCESS EXCLUSIVE lock**: one ``ALTER TABLE`` changes both
columns (one rewrite), then rebuilds every index of ``audit_logs``. Meanwhile nothing reads
the trail, and writes to it wait: as every change of the service writes an entry, every
change waits (sign-ins too). The ``ALTER`` first waits for every open transaction that has
read or written the table, a streaming export among them, and everything that comes after
it queues behind that wait. On a large trail plan a maintenance window with the service
stopped, and stop it in any case: an app server of an earlier release sends these values as
``varchar``, which the enums refuse (every audited change would answer 500), so this release
cannot be rolled server by server (docs/OPERATIONS.md). On the 10M seeded entries of a scratch
database (4.8 GB with its indexes), this machine (2 cores), ``maintenance_work_mem`` at its
default 64MB, ``fund db upgrade`` took 40.1 s and ``fund db downgrade 011`` 43.7 s
(2026-11-29), about 4 s per million entries.

A row whose value is outside the vocabulary makes the migration fail with PostgreSQL's
error, naming the enum and the value; its transaction rolls back, so no type is made and no
row or column changes. Such a row could only come from outside the API, and the trail
refuses updates: whoever owns the trail decides what becomes of it before upgrading.

What else names these columns, checked (migrations 002-011): the indexes on them (002) are
rebuilt by PostgreSQL with the table, under their names and definitions; the append-only
guard (003) compares rows as ``jsonb``, where an enum is its label, as the text was; the
range checks (011) and the default listing's partial index (008) name only ``timestamp``
and ``is_deleted``; the statistics targets (006) are on ``users``. A change of type drops
the two columns' planner statistics, so they are gathered again here (``ANALYZE`` of the
two columns, a sample, in the same transaction): the planner picks which index a filtered
page walks by them. The rewritten table has no visibility map yet, and autovacuum counts
no rewritten row: until a ``VACUUM``, ``/stats``' count by action cannot be an index-only
scan and reads the table (10M entries: 0.65-1.19 s instead of 0.48-0.53 s). Run
``VACUUM audit_logs`` after the upgrade (1.1 s there; it blocks neither reads nor writes).

An action or resource type added later is ``ALTER TYPE … ADD VALUE`` in a migration of its
own, which rewrites nothing.

Revision ID: 012
Revises: 011
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "012"
down_revision: str | None = "011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The labels are written out, not read from fund.audit.schemas: a migration makes what it
    # made, whatever the code says later (a new label is a migration of its own).
    op.execute(
        "CREATE TYPE audit_action AS ENUM ('CREATE', 'UPDATE', 'DELETE', 'LOGIN', 'LOGIN_FAILED')"
    )
    op.execute("CREATE TYPE audit_resource_type AS ENUM ('user', 'audit_log')")
    # One statement: one rewrite of the table for both columns.
    op.execute(
        "ALTER TABLE audit_logs"
        " ALTER COLUMN action TYPE audit_action USING action::audit_action,"
        " ALTER COLUMN resource_type TYPE audit_resource_type"
        " USING resource_type::audit_resource_type"
    )
    # A change of type drops the columns' planner statistics: gathered again (a sample).
    op.execute("ANALYZE audit_logs (action, resource_type)")


def downgrade() -> None:
    # Back to what migration 007 left: varchar of 001's lengths, compared bytewise.
    op.execute(
        "ALTER TABLE audit_logs"
        ' ALTER COLUMN action TYPE varchar(32) COLLATE "C" USING action::text,'
        ' ALTER COLUMN resource_type TYPE varchar(64) COLLATE "C" USING resource_type::text'
    )
    op.execute("DROP TYPE audit_resource_type")
    op.execute("DROP TYPE audit_action")
    op.execute("ANALYZE audit_logs (action, resource_type)")  # as after the upgrade
