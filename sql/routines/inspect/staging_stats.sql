-- ---------------------------------------------------------------------------
-- staging_stats: the figures behind pybatch.staging_summary.
--
-- UNLOGGED staging cannot be read on a hot standby: even planning a query that
-- names it fails there ("cannot access temporary or unlogged relations during
-- recovery"). So no view names pybatch.heartbeats; they call plpgsql functions
-- that check pg_is_in_recovery() first (plpgsql plans a statement only when it
-- first runs it, so the branch not taken is never planned).
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.staging_stats()
RETURNS TABLE (
    available boolean,
    reason text,
    estimated boolean,
    method text,
    rows_staged bigint,
    distinct_agents bigint,
    oldest_beat_at timestamptz,
    newest_beat_at timestamptz,
    oldest_beat_age interval,
    newest_beat_age interval,
    size_bytes bigint
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- Up to exact_max_pages (8 MB, ~120k-150k rows) every figure is exact: one
    -- scan with a distinct count, ~30 ms. Beyond that an exact scan alone takes
    -- 100-200 ms per million rows on a small server, so the figures come from
    -- a block sample of about sample_pages pages (~30k rows) instead.
    exact_max_pages CONSTANT bigint := 1024;
    sample_pages CONSTANT numeric := 256;
    heap_pages bigint;
    sample_percent numeric;
    sample_size bigint;
    sample_distinct bigint;
    sample_singletons bigint;
    live_counter bigint;
BEGIN
    IF pg_catalog.pg_is_in_recovery() THEN
        available := false;
        reason := 'hot standby: UNLOGGED staging (pybatch.heartbeats) exists only on the primary';
        RETURN NEXT;
        RETURN;
    END IF;
    available := true;
    size_bytes := pg_catalog.pg_total_relation_size('pybatch.heartbeats'::pg_catalog.regclass);
    heap_pages := pg_catalog.pg_relation_size('pybatch.heartbeats'::pg_catalog.regclass)
        / pg_catalog.current_setting('block_size')::bigint;

    IF heap_pages <= exact_max_pages THEN
        estimated := false;
        method := 'exact';
        SELECT pg_catalog.count(*), pg_catalog.count(DISTINCT h.agent_id),
               pg_catalog.min(h.beat_at), pg_catalog.max(h.beat_at)
        INTO rows_staged, distinct_agents, oldest_beat_at, newest_beat_at
        FROM pybatch.heartbeats h;
    ELSE
        estimated := true;
        sample_percent := LEAST(100, 100 * sample_pages / heap_pages);
        method := 'estimate from a ' || pg_catalog.round(sample_percent, 2)::text || ' % block sample';
        SELECT pg_catalog.sum(c.beats), pg_catalog.count(*), pg_catalog.count(*) FILTER (WHERE c.beats = 1),
               pg_catalog.min(c.first_at), pg_catalog.max(c.last_at)
        INTO sample_size, sample_distinct, sample_singletons, oldest_beat_at, newest_beat_at
        FROM (
            SELECT pg_catalog.count(*) AS beats, pg_catalog.min(h.beat_at) AS first_at,
                   pg_catalog.max(h.beat_at) AS last_at
            FROM pybatch.heartbeats h TABLESAMPLE SYSTEM (sample_percent)
            GROUP BY h.agent_id
        ) c;
        sample_size := COALESCE(sample_size, 0);
        -- Each block is in the sample with probability sample_percent: unbiased,
        -- but +-5-10 % from block to block. The statistics' live-tuple counter
        -- (kept per insert and delete, up to ~1 s behind) is closer; it is used
        -- unless a stats reset has made it disagree with the sample by a third.
        rows_staged := pg_catalog.round(sample_size * 100 / sample_percent)::bigint;
        live_counter := pg_catalog.pg_stat_get_live_tuples('pybatch.heartbeats'::pg_catalog.regclass);
        IF live_counter BETWEEN rows_staged * 2 / 3 AND rows_staged * 3 / 2 THEN
            rows_staged := live_counter;
            method := method || ', rows from the live-tuple counter';
        END IF;
        IF sample_size > 0 THEN
            -- Haas-Stokes "Duj1", the estimator ANALYZE uses for n_distinct:
            -- n*d / (n - f1 + f1*n/N), where f1 counts agents seen once in the sample.
            distinct_agents := LEAST(rows_staged, GREATEST(sample_distinct, pg_catalog.round(
                sample_size::numeric * sample_distinct
                / (sample_size - sample_singletons + sample_singletons::numeric * sample_size / rows_staged))::bigint));
        ELSE
            distinct_agents := 0;
        END IF;
    END IF;

    oldest_beat_age := pg_catalog.now() - oldest_beat_at;
    newest_beat_age := pg_catalog.now() - newest_beat_at;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION pybatch.staging_stats() IS
    'Backs pybatch.staging_summary: one row of staging figures, or available = false with a reason on a hot standby.';
REVOKE EXECUTE ON FUNCTION pybatch.staging_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pybatch.staging_stats() TO pg_monitor;
