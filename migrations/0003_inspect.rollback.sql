-- Undo 0003: the inspection views, their functions and pg_monitor's access.
REVOKE SELECT ON pybatch.settings FROM pg_monitor;
REVOKE USAGE ON SCHEMA pybatch FROM pg_monitor;
DROP VIEW pybatch.health;
DROP VIEW pybatch.agent_status;
DROP VIEW pybatch.flush_history;
DROP VIEW pybatch.staging_summary;
DROP FUNCTION pybatch.staged_latest_beats();
DROP FUNCTION pybatch.staging_stats();
