-- Objects that are not pybatch's but depend on pybatch's, so that dropping pybatch with
-- CASCADE would drop them too: a user's view over pybatch.agent_status (and a view over
-- that view), a table column of type pybatch.flush_result, a function or domain using a
-- pybatch type, a trigger, default or index calling a pybatch function, a foreign key to
-- a table pybatch created, ...
--
-- pybatch's objects are everything in the schemas given as parameter `schemas`, plus the
-- table given as `target` (public.workspace_agents when pybatch created it, else NULL), and the
-- parts of those (indexes, triggers, rules, constraints, defaults on their tables).
-- Dependants are followed through pg_depend, normal ('n') and automatic ('a') links, to
-- the end: whatever CASCADE would reach. A view's _RETURN rule stands for the view.
-- One row per object, described by pg_identify_object (always schema-qualified).
WITH RECURSIVE
ours_ns AS (
    SELECT n.oid FROM pg_catalog.pg_namespace n WHERE n.nspname = ANY (%(schemas)s::text[])
),
reach (classid, objid, objsubid) AS (
    SELECT 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid, c.oid, 0
    FROM pg_catalog.pg_class c
    WHERE c.relnamespace IN (SELECT oid FROM ours_ns) OR c.oid = COALESCE(%(target)s::pg_catalog.oid, 0)
    UNION
    SELECT 'pg_catalog.pg_type'::pg_catalog.regclass::pg_catalog.oid, t.oid, 0
    FROM pg_catalog.pg_type t
    WHERE t.typnamespace IN (SELECT oid FROM ours_ns)
    UNION
    SELECT 'pg_catalog.pg_proc'::pg_catalog.regclass::pg_catalog.oid, p.oid, 0
    FROM pg_catalog.pg_proc p
    WHERE p.pronamespace IN (SELECT oid FROM ours_ns)
    UNION
    SELECT r.classid, r.objid, r.objsubid
    FROM reach AS f
    JOIN pg_catalog.pg_depend d
        ON d.refclassid = f.classid AND d.refobjid = f.objid
        AND (f.objsubid = 0 OR d.refobjsubid = f.objsubid)
    LEFT JOIN pg_catalog.pg_rewrite rw
        ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND rw.oid = d.objid
        AND rw.rulename = '_RETURN'
    CROSS JOIN LATERAL (
        SELECT CASE WHEN rw.oid IS NULL THEN d.classid
                    ELSE 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid END AS classid,
               COALESCE(rw.ev_class, d.objid) AS objid,
               CASE WHEN rw.oid IS NULL THEN d.objsubid ELSE 0 END AS objsubid
    ) AS r
    WHERE d.deptype IN ('n', 'a')
),
owned AS (
    SELECT f.classid, f.objid, f.objsubid,
        CASE f.classid
            WHEN 'pg_catalog.pg_class'::pg_catalog.regclass THEN
                COALESCE((SELECT i.indrelid FROM pg_catalog.pg_index i WHERE i.indexrelid = f.objid), f.objid)
            WHEN 'pg_catalog.pg_trigger'::pg_catalog.regclass THEN
                (SELECT tg.tgrelid FROM pg_catalog.pg_trigger tg WHERE tg.oid = f.objid)
            WHEN 'pg_catalog.pg_attrdef'::pg_catalog.regclass THEN
                (SELECT ad.adrelid FROM pg_catalog.pg_attrdef ad WHERE ad.oid = f.objid)
            WHEN 'pg_catalog.pg_rewrite'::pg_catalog.regclass THEN
                (SELECT ru.ev_class FROM pg_catalog.pg_rewrite ru WHERE ru.oid = f.objid)
            WHEN 'pg_catalog.pg_constraint'::pg_catalog.regclass THEN
                (SELECT NULLIF(co.conrelid, 0) FROM pg_catalog.pg_constraint co WHERE co.oid = f.objid)
            WHEN 'pg_catalog.pg_policy'::pg_catalog.regclass THEN
                (SELECT po.polrelid FROM pg_catalog.pg_policy po WHERE po.oid = f.objid)
            WHEN 'pg_catalog.pg_statistic_ext'::pg_catalog.regclass THEN
                (SELECT st.stxrelid FROM pg_catalog.pg_statistic_ext st WHERE st.oid = f.objid)
        END AS owner_rel
    FROM reach f
),
placed AS (
    SELECT o.*,
        CASE
            WHEN o.owner_rel IS NOT NULL THEN
                (SELECT c.relnamespace FROM pg_catalog.pg_class c WHERE c.oid = o.owner_rel)
            WHEN o.classid = 'pg_catalog.pg_type'::pg_catalog.regclass THEN
                (SELECT t.typnamespace FROM pg_catalog.pg_type t WHERE t.oid = o.objid)
            WHEN o.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass THEN
                (SELECT p.pronamespace FROM pg_catalog.pg_proc p WHERE p.oid = o.objid)
            WHEN o.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass THEN
                (SELECT co.connamespace FROM pg_catalog.pg_constraint co WHERE co.oid = o.objid)
            WHEN o.classid = 'pg_catalog.pg_operator'::pg_catalog.regclass THEN
                (SELECT op.oprnamespace FROM pg_catalog.pg_operator op WHERE op.oid = o.objid)
        END AS nsp
    FROM owned o
)
SELECT DISTINCT (pg_catalog.pg_identify_object(p.classid, p.objid, p.objsubid)).type || ' '
    || (pg_catalog.pg_identify_object(p.classid, p.objid, p.objsubid)).identity AS dependant
FROM placed p
WHERE NOT (p.nsp IS NOT NULL AND p.nsp IN (SELECT oid FROM ours_ns))
    AND NOT (p.owner_rel IS NOT NULL AND p.owner_rel = COALESCE(%(target)s::pg_catalog.oid, 0))
ORDER BY 1;
