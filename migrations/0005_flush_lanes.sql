-- pybatch 0005: a flush can merge in lanes, one session each
-- (sql/routines/flush/flush_lane_pass.sql says how). The hand-off numbers the
-- passes for a given number of lanes, so pybatch.drain_into() takes it, and
-- its old signature goes. The routines themselves live in sql/routines/.
-- depends: 0004_scheduler_release_by_token

DROP FUNCTION IF EXISTS pybatch.drain_into(regclass, regclass, regclass, regclass, bigint, interval);
