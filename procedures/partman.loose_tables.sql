-- partman.loose_tables(parent): the tables of the parent's schema named like its partitions,
-- `<table>_m<M>_r<R>` (or that plus '_split_old'), that are not attached, and what each is:
--   retired   `<name>_split_old`: the old partition of a split whose switch committed, not
--             dropped yet (`split --resume` drops it);
--   target    carries the CHECK `<name>_split_check` that a split's prepare gave it, and an even
--             modulus: half of an unfinished split of slice (M/2, R mod M/2);
--   detached  no attached partition covers any of its slice: a partition detached by hand (a gap),
--             the source of an unfinished split;
--   stray     anything else: named like a partition, part of nothing.
-- Everything the manager knows comes from the catalog like this; it keeps no state table.
--
-- Inputs: the parent. Output: one row per such table. Errors: none. Locks: none.
create or replace function partman.loose_tables(parent regclass)
returns table (rel regclass, name text, modulus integer, remainder integer, role text, tuples real, bytes bigint)
language sql
stable
set search_path = pg_catalog, pg_temp
as $function$
    select l.oid::regclass, n.nspname || '.' || l.relname, x.m[1]::integer, x.m[2]::integer,
           case when x.m[3] is not null then 'retired'
                when exists (select from pg_constraint as k where k.conrelid = l.oid and k.contype = 'c'
                             and k.conname = l.relname || '_split_check')
                    then case when x.m[1]::integer % 2 = 0 then 'target' else 'stray' end
                when not exists (select from partman.partitions(parent) as q
                                 where q.kind = 'hash' and not q.pending
                                   and (x.m[2]::integer - q.remainder) % gcd(x.m[1]::integer, q.modulus) = 0)
                    then 'detached'
                else 'stray' end,
           l.reltuples, pg_total_relation_size(l.oid)
    from pg_class as p
    join pg_class as l on l.relnamespace = p.relnamespace and starts_with(l.relname, p.relname || '_m')
    join pg_namespace as n on n.oid = l.relnamespace
    cross join lateral regexp_match(substr(l.relname, length(p.relname) + 1),
                                    '^_m(\d+)_r(\d+)(_split_old)?$') as x(m)
    where p.oid = parent and l.relkind in ('r', 'p') and not l.relispartition and x.m is not null
      and x.m[1]::integer > 0
    order by 3, 4, 2
$function$;
