-- ---------------------------------------------------------------------------
-- flush: the same flush in the caller's transaction, for where a procedure
-- cannot commit. Correct anywhere, but one transaction cannot prune its own
-- old versions, so on a full page its later passes go non-HOT.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.flush(max_rows bigint DEFAULT NULL, lock_wait interval DEFAULT '0 seconds')
RETURNS pybatch.flush_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    result pybatch.flush_result;
    passes_before integer;
BEGIN
    PERFORM pybatch.check_merge_routines();  -- the table's owner changed hands: run migrate first
    result := pybatch.flush_distributed(max_rows, lock_wait);
    IF result.started_at IS NOT NULL THEN
        RETURN result;  -- the workers commit their own passes whatever this transaction does
    END IF;
    -- The same steps in the caller's transaction: correct, but one transaction
    -- cannot prune its own old versions, so on a full page the later passes
    -- go non-HOT. Use CALL pybatch.flush_in_passes() where a COMMIT is allowed.
    result := pybatch.flush_begin(max_rows, lock_wait);
    LOOP
        passes_before := result.passes;
        result := pybatch.flush_pass(result);
        EXIT WHEN result.skipped OR result.error IS NOT NULL OR result.passes = passes_before;
    END LOOP;
    RETURN pybatch.flush_finish(result);
END
$$;
COMMENT ON FUNCTION pybatch.flush(bigint, interval) IS
    'Flush in the caller''s transaction: merges staged heartbeats into public.workspace_agents and logs the flush. Correct anywhere, but the default path is CALL pybatch.flush_in_passes(), which commits between passes and keeps updates HOT.';
REVOKE EXECUTE ON FUNCTION pybatch.flush(bigint, interval) FROM PUBLIC;
