-- ---------------------------------------------------------------------------
-- A duration for people: "12.3 s".
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.seconds_text(duration interval)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.round(EXTRACT(EPOCH FROM duration), 1)::text || ' s';
$$;
COMMENT ON FUNCTION pybatch.seconds_text(interval) IS
    'Internal: an interval as seconds with one decimal ("12.3 s"), for the reasons the views give.';
