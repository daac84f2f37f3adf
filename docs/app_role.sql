-- The privileges of the role `fund serve` connects as: what the service needs, and nothing
-- that could rewrite the audit trail (docs/AUDIT.md, "Immutability, and what it rests on").
--
-- Run it as the role that owns the tables (the one that ran `fund db upgrade`), after the
-- migrations, on the service's database:
--
--     psql "postgresql://fund_owner@host/fund" -v ON_ERROR_STOP=1 -f docs/app_role.sql
--
-- It grants to `fund_app`; for another name, replace every `fund_app` below.
-- tests/conftest.py applies this very file to the role the tests run the service as.

GRANT USAGE ON SCHEMA public TO fund_app;

-- `fund serve` checks that the migrations are current when it starts.
GRANT SELECT ON alembic_version TO fund_app;

-- Accounts are created and changed, never removed (a deactivation is an UPDATE).
GRANT SELECT, INSERT, UPDATE ON users TO fund_app;

-- The audit trail: appended to and read; the one column a soft delete sets, and no other.
-- No DELETE, no TRUNCATE; the triggers also refuse un-deleting, which this GRANT would allow.
GRANT SELECT, INSERT ON audit_logs TO fund_app;
GRANT UPDATE (is_deleted) ON audit_logs TO fund_app;

-- Cache invalidations that could not reach Redis, replayed by every worker (docs/CACHING.md).
GRANT SELECT, INSERT, DELETE ON cache_invalidations TO fund_app;

-- Identity columns need no sequence GRANT: INSERT on the table is enough.
