-- ---------------------------------------------------------------------------
-- Quarantine: retry now.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.requeue_quarantined(agent uuid DEFAULT NULL)
RETURNS bigint
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH due AS (
        UPDATE pybatch.quarantine q SET retry_at = '-infinity'
        WHERE agent IS NULL OR q.agent_id = agent
        RETURNING 1
    )
    SELECT pg_catalog.count(*) FROM due;
$$;
COMMENT ON FUNCTION pybatch.requeue_quarantined(uuid) IS
    'Makes quarantined agents (all, or one) due for retry at the next flush; returns how many.';
REVOKE EXECUTE ON FUNCTION pybatch.requeue_quarantined(uuid) FROM PUBLIC;
