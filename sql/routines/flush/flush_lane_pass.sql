-- ---------------------------------------------------------------------------
-- flush_lane_pass: one lane's pass of a flush in lanes. The lanes of a round
-- run at once, each in its own session, and all commit before the next round
-- (pybatch.flush.flush_in_lanes): their passes share no heap page, and the
-- lockstep leaves no snapshot older than a page's last update, so each pass
-- can prune its pages and stay HOT. Lane passes share pybatch.flush_lock; a
-- hand-off, a one-lane pass and a flush's finish take it alone.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.flush_lane_pass(result pybatch.flush_result, this_pass integer)
RETURNS pybatch.flush_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    done pybatch.flush_result;
BEGIN
    IF result.skipped OR result.error IS NOT NULL THEN
        RETURN result;
    END IF;
    PERFORM FROM pybatch.flush_lock FOR SHARE;  -- waits at most the session's lock_timeout
    IF NOT EXISTS (SELECT FROM pybatch.pending p WHERE p.pass_no = this_pass) THEN
        RETURN result;  -- no page of this lane has that many agents: passes does not grow
    END IF;
    done := pybatch.pass_in(result, 'pybatch.pending', 'public.workspace_agents', 'pybatch.quarantine', this_pass);
    PERFORM pybatch.flush_log_add(result, done);
    RETURN done;
END
$$;
COMMENT ON FUNCTION pybatch.flush_lane_pass(pybatch.flush_result, integer) IS
    'Internal step 2 of a flush in lanes: merges the pending rows of pass this_pass (one row per heap page, no page of another lane) and adds its figures to result. passes does not grow when that pass is empty.';
REVOKE EXECUTE ON FUNCTION pybatch.flush_lane_pass(pybatch.flush_result, integer) FROM PUBLIC;
