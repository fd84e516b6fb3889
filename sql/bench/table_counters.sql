-- bench counters: the WAL position and the cumulative row-version counters of
-- public.workspace_agents. pg_stat_clear_snapshot() first, so every call sees the
-- statistics as they are now, not a snapshot cached earlier in the session.
SELECT pg_catalog.pg_current_wal_lsn() AS wal_lsn,
       COALESCE(s.n_tup_upd, 0) AS n_tup_upd,
       COALESCE(s.n_tup_hot_upd, 0) AS n_tup_hot_upd,
       COALESCE(s.n_tup_ins, 0) AS n_tup_ins
FROM (SELECT pg_catalog.pg_stat_clear_snapshot()) AS cleared
LEFT JOIN pg_catalog.pg_stat_user_tables s
       ON s.relid = 'public.workspace_agents'::pg_catalog.regclass
