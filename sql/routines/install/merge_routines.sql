-- ---------------------------------------------------------------------------
-- merge_routines: the functions that write public.workspace_agents (and what
-- they call under the flush lock). align_owner() gives them to the table's
-- owner; check_merge_routines() refuses to flush when one has been altered.
-- One list for both. definer: whether callers reach it directly, so it must
-- stay SECURITY DEFINER.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.merge_routines()
RETURNS TABLE (routine pg_catalog.regprocedure, definer boolean)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.routine::pg_catalog.regprocedure, r.definer
    FROM (VALUES
        ('pybatch.flush_begin(bigint, interval)', true),
        ('pybatch.flush_begin_lanes(bigint, interval, integer)', true),
        ('pybatch.flush_pass(pybatch.flush_result)', true),
        ('pybatch.flush_lane_pass(pybatch.flush_result, integer)', true),
        ('pybatch.flush_last_pass()', true),
        ('pybatch.flush_finish(pybatch.flush_result)', true),
        ('pybatch.flush(bigint, interval)', true),
        ('pybatch.flush_distributed(bigint, interval)', true),
        ('pybatch.flush_tidy()', true),
        ('pybatch.requeue_quarantined(uuid)', true),
        ('pybatch.disconnect(uuid, timestamptz)', true),
        ('pybatch.flush_take_lock(interval)', false)
    ) AS r (routine, definer);
$$;
COMMENT ON FUNCTION pybatch.merge_routines() IS
    'Internal: the functions owned by the owner of public.workspace_agents (align_owner) and checked before each flush (check_merge_routines).';
