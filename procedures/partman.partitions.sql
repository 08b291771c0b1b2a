-- partman.partitions(parent): the partitions of one partitioned table, their bounds parsed from
-- pg_get_expr(relpartbound) as PostgreSQL prints them: 'FOR VALUES WITH (modulus 16, remainder 3)'
-- is hash slice (16, 3); 'DEFAULT', 'FOR VALUES IN (..)' and 'FOR VALUES FROM (..) TO (..)' are
-- kinds default, list and range. Partitions are named after their slice of the hash space,
-- `<table>_m<modulus>_r<remainder>`, so a name says which slice a table holds even after some
-- partitions were split (m16_r3 splits into m32_r3 and m32_r19).
--
-- Inputs: the parent. Output: one row per partition, a pending detach included
-- (pg_inherits.inhdetachpending: PostgreSQL no longer routes rows to it); rows = reltuples
-- (-1: never analyzed), bytes = table + indexes + TOAST. Errors: none. Locks: none.
create or replace function partman.partitions(parent regclass)
returns table (part regclass, name text, bound text, kind text, modulus integer, remainder integer,
               pending boolean, sub_partitioned boolean, tuples real, bytes bigint)
language sql
stable
set search_path = pg_catalog, pg_temp
as $function$
    select c.oid::regclass, n.nspname || '.' || c.relname, b.bound,
           case when b.bound = 'DEFAULT' then 'default' when h.m is not null then 'hash'
                when b.bound like 'FOR VALUES IN %' then 'list' else 'range' end,
           h.m[1]::integer, h.m[2]::integer, i.inhdetachpending, c.relkind = 'p', c.reltuples,
           pg_total_relation_size(c.oid)
    from pg_inherits as i
    join pg_class as c on c.oid = i.inhrelid
    join pg_namespace as n on n.oid = c.relnamespace
    cross join lateral (select pg_get_expr(c.relpartbound, c.oid) as bound) as b
    cross join lateral regexp_match(b.bound, '^FOR VALUES WITH \(modulus (\d+), remainder (\d+)\)$') as h(m)
    where i.inhparent = parent
    order by 4, 5, 6, 2
$function$;
