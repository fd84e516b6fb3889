-- Undo 0005: the routines of lanes go. Routines are not re-applied by a
-- rollback: the older pybatch's `migrate` applies its own drain_into() and
-- flush_begin(), which this version's flush_begin() would otherwise call.
DROP FUNCTION IF EXISTS pybatch.drain_into(regclass, regclass, regclass, regclass, bigint, interval, integer);
DROP FUNCTION IF EXISTS pybatch.flush_begin_lanes(bigint, interval, integer);
DROP FUNCTION IF EXISTS pybatch.flush_lane_pass(pybatch.flush_result, integer);
DROP FUNCTION IF EXISTS pybatch.flush_last_pass();
DROP FUNCTION IF EXISTS pybatch.pass_in(pybatch.flush_result, regclass, regclass, regclass, integer);
DROP FUNCTION IF EXISTS pybatch.flush_log_add(pybatch.flush_result, pybatch.flush_result);
