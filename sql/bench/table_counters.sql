-- bench counters: the WAL position, the cumulative row-version counters of
-- public.workspace_agents, and the row versions of pybatch.flush_log (each flush
-- inserts its row at the hand-off and updates it per pass and at its end).
-- pg_stat_clear_snapshot() first, so every call sees the statistics as they are
-- now, not a snapshot cached earlier in the session.
SELECT pg_catalog.pg_current_wal_lsn() AS wal_lsn,
       COALESCE(s.n_tup_upd, 0) AS n_tup_upd,
       COALESCE(s.n_tup_hot_upd, 0) AS n_tup_hot_upd,
       COALESCE(s.n_tup_ins, 0) AS n_tup_ins,
       COALESCE(l.n_tup_upd, 0) AS log_updates
FROM (SELECT pg_catalog.pg_stat_clear_snapshot()) AS cleared
LEFT JOIN pg_catalog.pg_stat_user_tables s
       ON s.relid = 'public.workspace_agents'::pg_catalog.regclass
LEFT JOIN pg_catalog.pg_stat_user_tables l
       ON l.relid = pg_catalog.to_regclass('pybatch.flush_log')
