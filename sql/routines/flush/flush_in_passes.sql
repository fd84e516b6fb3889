-- ---------------------------------------------------------------------------
-- The two ways to flush.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE PROCEDURE pybatch.flush_in_passes(max_rows bigint DEFAULT NULL,
                                         lock_wait interval DEFAULT '0 seconds',
                                         INOUT result pybatch.flush_result DEFAULT NULL)
LANGUAGE plpgsql
AS $$
-- No SET clause and no SECURITY DEFINER: PostgreSQL forbids COMMIT in a
-- procedure with either. It only calls schema-qualified functions that pin
-- their own search_path (the steps are SECURITY DEFINER), and its own
-- operators and types are qualified too: it runs under the caller's
-- search_path, which a database or role setting may have changed
-- (ALTER DATABASE ... SET search_path = evil, pg_catalog).
DECLARE
    passes_before integer;
BEGIN
    -- Every step in read committed, whatever the role's or the database's default
    -- (default_transaction_isolation): a repeatable-read snapshot taken before a
    -- step waits for the flush lock would miss another flush's committed hand-off.
    -- The CALL's own transaction took its snapshot already, so it ends first.
    COMMIT;
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    -- The steps run as the table's owner, or not at all (see check_merge_routines()).
    PERFORM pybatch.check_merge_routines();
    result := pybatch.flush_distributed(max_rows, lock_wait);
    IF result.started_at IS NOT NULL THEN
        COMMIT;  -- the workers committed their own passes
        RETURN;
    END IF;
    result := pybatch.flush_begin(max_rows, lock_wait);
    COMMIT;  -- the hand-off is durable (as staging was) before any merge
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;  -- first, before any query of the new transaction
    LOOP
        passes_before := result.passes;
        result := pybatch.flush_pass(result);
        COMMIT;  -- old versions of this pass become prunable; the next pass stays HOT
        SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
        EXIT WHEN result.skipped OR result.error IS NOT NULL OR result.passes OPERATOR(pg_catalog.=) passes_before;
    END LOOP;
    result := pybatch.flush_finish(result);
    COMMIT;
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    PERFORM pybatch.flush_tidy();
    COMMIT;
END
$$;
COMMENT ON PROCEDURE pybatch.flush_in_passes(bigint, interval, pybatch.flush_result) IS
    'The default flush: CALL pybatch.flush_in_passes(); outside a transaction block. Commits after the hand-off and after each pass (at most one row per heap page), so updates stay HOT on a fillfactor-100 table. Returns the flush_result. Inside a transaction block use SELECT pybatch.flush() instead.';
REVOKE EXECUTE ON PROCEDURE pybatch.flush_in_passes(bigint, interval, pybatch.flush_result) FROM PUBLIC;
