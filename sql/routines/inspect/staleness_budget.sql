-- ---------------------------------------------------------------------------
-- The staleness budget. NULL arguments take the stored settings, so a caller can
-- ask "what if flush_interval were 25 s?" before storing it.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.staleness_budget(new_flush_interval interval DEFAULT NULL,
                                         new_heartbeat_period interval DEFAULT NULL,
                                         new_client_write_interval interval DEFAULT NULL,
                                         new_inactive_timeout interval DEFAULT NULL)
RETURNS TABLE (
    heartbeat_period interval,
    client_write_interval interval,
    flush_interval interval,
    flush_duration interval,
    flush_duration_measured boolean,
    worst_staleness interval,
    inactive_timeout interval,
    margin interval,
    max_flush_interval interval,
    verdict text,
    allowed boolean,
    reason text
)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH cfg AS (
        SELECT COALESCE(new_heartbeat_period, s.heartbeat_period) AS period,
               COALESCE(new_client_write_interval, s.client_write_interval) AS write_interval,
               COALESCE(new_flush_interval, s.flush_interval) AS flush_interval,
               COALESCE(new_inactive_timeout, s.inactive_timeout) AS timeout
        FROM pybatch.settings s
    ), measured AS (
        -- The flush's own duration: the longest of the last 20 successful flushes.
        SELECT pg_catalog.max(r.duration) AS duration
        FROM (SELECT l.duration FROM pybatch.flush_log l WHERE l.error IS NULL AND l.completed_at IS NOT NULL
              ORDER BY l.started_at DESC LIMIT 20) r
    ), parts AS (
        SELECT c.*,
               COALESCE(m.duration, interval '1 second') AS duration,  -- assumed until one is measured
               m.duration IS NOT NULL AS measured,
               GREATEST(interval '2 seconds', c.timeout / 5) AS margin
        FROM cfg c CROSS JOIN measured m
    ), summed AS (
        SELECT p.*,
               p.period + p.write_interval + p.flush_interval + p.duration AS worst,
               -- A flush is assumed to take at least 1 s, measured or not, so `cron install`
               -- (nothing measured yet) and `status` name the same limit.
               p.timeout - p.margin - (p.period + p.write_interval + GREATEST(p.duration, interval '1 second')) AS room
        FROM parts p
    ), judged AS (
        SELECT s.*,
               CASE WHEN s.worst <= s.timeout - s.margin THEN 'ok'
                    WHEN s.worst <= s.timeout THEN 'tight'
                    ELSE 'exceeds' END AS verdict
        FROM summed s
    )
    SELECT j.period, j.write_interval, j.flush_interval, j.duration, j.measured, j.worst, j.timeout,
           j.margin,
           CASE WHEN j.room > interval '0' THEN j.room END,
           j.verdict,
           j.verdict <> 'exceeds',
           'heartbeat period ' || pybatch.seconds_text(j.period)
           || ' + client write interval ' || pybatch.seconds_text(j.write_interval)
           || ' + flush interval ' || pybatch.seconds_text(j.flush_interval)
           || ' + flush duration ' || pybatch.seconds_text(j.duration)
           || CASE WHEN j.measured THEN ' (longest of the last 20 flushes)' ELSE ' (assumed: no flush measured yet)' END
           || ' = ' || pybatch.seconds_text(j.worst)
           || CASE j.verdict
                  WHEN 'ok' THEN ', within inactive_timeout ' || pybatch.seconds_text(j.timeout)
                                 || ' with a margin of at least ' || pybatch.seconds_text(j.margin)
                  WHEN 'tight' THEN ', within inactive_timeout ' || pybatch.seconds_text(j.timeout)
                                 || ' but with less than the ' || pybatch.seconds_text(j.margin)
                                 || ' margin: a slow flush or clock skew makes healthy agents look disconnected'
                  ELSE ', over inactive_timeout ' || pybatch.seconds_text(j.timeout)
                       || ': healthy agents will show as disconnected'
              END
           || CASE WHEN j.verdict = 'ok' THEN ''
                   -- Rounded down: "at most 7.9 s" for 7.95 s, never up past the limit.
                   WHEN j.room > interval '0' THEN '; use a flush_interval of at most ' || pybatch.seconds_text(
                       pg_catalog.make_interval(secs => (pg_catalog.floor(EXTRACT(EPOCH FROM j.room) * 10) / 10)::double precision))
                   ELSE '; no flush_interval fits: shorten heartbeat_period or client_write_interval, '
                        'or raise inactive_timeout' END
    FROM judged j;
$$;
COMMENT ON FUNCTION pybatch.staleness_budget(interval, interval, interval, interval) IS
    'The staleness budget: heartbeat_period + client_write_interval + flush_interval + the flush''s duration (the longest of the last 20 successful flushes; 1 s assumed before any) is how stale last_connected_at can get, against inactive_timeout. verdict ok (within, with margin = max(2 s, inactive_timeout / 5)), tight (within, less margin) or exceeds; allowed = verdict <> exceeds (what `config set` and `cron install` require). NULL arguments take the stored settings; pass new_flush_interval (etc.) to judge a value before storing it. max_flush_interval: the longest flush_interval that keeps the margin (NULL: none does).';
REVOKE EXECUTE ON FUNCTION pybatch.staleness_budget(interval, interval, interval, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pybatch.staleness_budget(interval, interval, interval, interval) TO pg_monitor;
