-- partman.unfinished(parent): the splits of one hash-partitioned table that were started and
-- not finished, recognised from the catalog alone (what `split --resume` does with each:
-- docs/partitions.md, "Interrupted splits"). A split of slice (m, r) is unfinished when
-- unattached targets `<table>_m<2m>_r<r>` / `_r<r+m>` with their '_split_check' exist, when a
-- partition is DETACH PENDING (a hand-run DETACH .. CONCURRENTLY that did not end), or when a
-- table named like a partition is detached and its slice is a gap (partman.loose_tables).
-- Its source is, in this order, the attached partition of slice (m, r), the pending one, or the
-- detached table of that name; none: 'missing' (the targets cannot be completed automatically).
-- The split session lock (partman.split_holder) tells "running" from "interrupted".
--
-- Inputs: the parent. Output: one row per unfinished split with its one-line description.
-- Errors: none. Locks: none.
create or replace function partman.unfinished(parent regclass)
returns table (source text, modulus integer, remainder integer, source_rel regclass, state text,
               targets text[], mirror boolean, running integer, description text)
language sql
stable
set search_path = pg_catalog, pg_temp
as $function$
    with loose as (select * from partman.loose_tables(parent)),
    parts as (select * from partman.partitions(parent) where kind = 'hash'),
    base as (select n.nspname || '.' || c.relname as name from pg_class as c
             join pg_namespace as n on n.oid = c.relnamespace where c.oid = parent),
    slices as (
        select l.modulus / 2 as m, l.remainder % (l.modulus / 2) as r from loose as l where l.role = 'target'
        union select l.modulus, l.remainder from loose as l where l.role = 'detached'
        union select p.modulus, p.remainder from parts as p where p.pending
    ),
    found as (
        select s.m, s.r, src.rel, coalesce(src.name, (select name from base) || '_m' || s.m || '_r' || s.r) as name,
               coalesce(src.state, 'missing') as state,
               array(select l.name from loose as l where l.role = 'target' and l.modulus = 2 * s.m
                     and l.remainder in (s.r, s.r + s.m) order by l.remainder) as targets,
               exists (select from pg_trigger as t where t.tgrelid = src.rel and t.tgname = 'pgvote_split_mirror'
                       and t.tgenabled in ('O', 'A')) as mirror,
               (select h.pid from partman.split_holder() as h
                where src.rel is null or h.application_name in ('pgvote split', 'pgvote split ' || src.name)) as running
        from slices as s
        left join lateral (
            select c.rel, c.name, c.state from (
                select p.part as rel, p.name, case when p.pending then 'detach pending' else 'attached' end as state,
                       case when p.pending then 2 else 1 end as o
                from parts as p where p.modulus = s.m and p.remainder = s.r
                union all
                select l.rel, l.name, 'detached', 3 from loose as l
                where l.modulus = s.m and l.remainder = s.r and l.role in ('detached', 'stray')
            ) as c order by c.o limit 1
        ) as src on true
    )
    select f.name, f.m, f.r, f.rel, f.state, f.targets, f.mirror, f.running,
           case when f.running is not null
                    then format('split of %s (modulus %s, remainder %s) is running (pid %s)', f.name, f.m, f.r, f.running)
                when f.state = 'missing'
                    then format('split of %s (modulus %s, remainder %s): the source table is missing; targets %s '
                                'cannot be completed automatically', f.name, f.m, f.r,
                                coalesce(nullif(array_to_string(f.targets, ', '), ''), 'no targets yet'))
                else format('split of %s (modulus %s, remainder %s) %s (%s); finish it with '
                            '`pgvote partitions split --resume`', f.name, f.m, f.r,
                            case f.state when 'attached' then 'interrupted before its switch'
                                         when 'detach pending' then 'source is DETACH PENDING: inserts for this slice fail'
                                         else 'source is detached: its slice has no partition' end,
                            coalesce(nullif(array_to_string(f.targets, ', '), ''), 'no targets yet')) end
    from found as f
    order by f.m, f.r
$function$;
