-- Remove the benchmark's scratch objects (pybatch's own tables are left as they are).
DROP SCHEMA IF EXISTS drain_bench CASCADE;
