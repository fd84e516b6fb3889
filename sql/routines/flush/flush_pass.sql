-- ---------------------------------------------------------------------------
-- flush_pass: the next pass, under the lock.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.flush_pass(result pybatch.flush_result)
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
    PERFORM pybatch.flush_take_lock(NULL);
    done := pybatch.next_pass_in(result, 'pybatch.pending', 'public.workspace_agents', 'pybatch.quarantine');
    PERFORM pybatch.flush_log_add(result, done);
    RETURN done;
END
$$;
COMMENT ON FUNCTION pybatch.flush_pass(pybatch.flush_result) IS
    'Internal step 2 of a flush, repeated: merges the pending rows of the lowest pass_no (one row per heap page) and adds its figures to result. passes does not grow when nothing was left.';
REVOKE EXECUTE ON FUNCTION pybatch.flush_pass(pybatch.flush_result) FROM PUBLIC;
