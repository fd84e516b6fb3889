-- pybatch 0007: each pass's update fetches its rows by ctid, as 0004 meant it to.
-- 0004's merge_pass_in() locks a pass's rows by primary key (the index path
-- prunes each page, which keeps the update HOT) and then updates them by the
-- ctids it locked. With sequential scans off for the function, the planner
-- still preferred a full scan of the primary key to thousands of ctid fetches
-- once the table had grown past a pass: every pass then read the whole index
-- (100,000 entries per pass at 100k agents). Index scans off as well leave the
-- lock its bitmap index scan (which prunes too) and the update a TID scan, so a
-- pass costs its own rows again. Measured: docs/benchmarks.md.
-- depends: 0006_citus

ALTER FUNCTION pybatch.merge_pass_in(regclass, regclass, integer, uuid) SET enable_indexscan = off;
