-- ---------------------------------------------------------------------------
-- A zeroed result for the shard and coordinator steps.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.empty_result()
RETURNS pybatch.flush_result
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    result pybatch.flush_result;
BEGIN
    result.started_at := pg_catalog.clock_timestamp();
    result.skipped := false;
    result.rows_staged := 0;
    result.agents_updated := 0;
    result.stale_heartbeats := 0;
    result.unknown_heartbeats := 0;
    result.future_heartbeats := 0;
    result.passes := 0;
    result.hot_updates := 0;
    result.deferred_agents := 0;
    result.quarantined_agents := 0;
    RETURN result;
END
$fn$;
COMMENT ON FUNCTION pybatch.empty_result() IS
    'Internal: a flush_result with every count 0, started now.';
