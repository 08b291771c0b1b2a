-- partman.status(schema_name, exact, top): how the rows spread over the partitions of every
-- top-level partitioned table of a schema, for `pgvote partitions status`. Rows are the
-- planner's estimate (pg_class.reltuples, kept by autovacuum/ANALYZE; a partition never analyzed
-- is counted when at most 8 MB, else unknown) unless `exact`, which counts them all. The largest
-- values of the first key column (the largest polls) come from the column statistics (pg_stats
-- most common values x rows), or from a GROUP BY with `exact`. Skew is the largest partition's
-- rows divided by the mean.
--
-- Inputs: the schema; exact; top = largest values per partition (0: none). Output: a JSON array,
-- one object per table: table, strategy, key, partitions [name, bound, modulus, remainder, state,
-- rows, exact, bytes, share, largest [value, rows]], total_rows, total_bytes, skew,
-- unfinished_splits, stray_tables, retired_tables. Errors: none. Locks: with `exact`, ACCESS SHARE
-- on every partition it counts (a scan of each).
create or replace function partman.status(schema_name text, exact boolean default false, top integer default 3)
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $function$
declare
    t record;
    p record;
    rows bigint;
    counted boolean;
    key text;
    largest jsonb;
    parts jsonb;
    tables jsonb := '[]'::jsonb;
begin
    for t in select * from partman.partitioned_tables(schema_name) loop
        parts := '[]';
        key := t.key[1];  -- the first key column (the poll id of voting.ballots)
        for p in select * from partman.partitions(t.rel) loop
            counted := exact or (p.tuples < 0 and p.bytes <= 8 << 20);
            if counted then
                execute format('select count(*) from %s', p.part) into rows;
            else
                rows := case when p.tuples >= 0 then p.tuples::bigint end;
            end if;
            largest := '[]';
            if key is not null and top > 0 and not p.sub_partitioned then
                if exact then
                    execute format('select coalesce(jsonb_agg(jsonb_build_object(''value'', v, ''rows'', n)), ''[]'') '
                                   'from (select %1$I::text as v, count(*) as n from %2$s group by 1 '
                                   'order by 2 desc, 1 limit %3$s) as g', key, p.part, top) into largest;
                else
                    select coalesce(jsonb_agg(jsonb_build_object('value', v, 'rows', round(f * rows)) order by f desc), '[]')
                    into largest
                    from (select v, f from pg_stats as s, unnest(s.most_common_vals::text::text[], s.most_common_freqs) as u(v, f)
                          where s.schemaname = split_part(p.name, '.', 1) and s.tablename = split_part(p.name, '.', 2)
                            and s.attname = key and not s.inherited and rows is not null
                          order by f desc limit top) as m;
                end if;
            end if;
            parts := parts || jsonb_build_object(
                'name', p.name, 'bound', p.bound, 'modulus', p.modulus, 'remainder', p.remainder,
                'state', case when p.pending then 'detach pending' else 'attached' end, 'rows', rows,
                'exact', counted, 'bytes', p.bytes, 'largest', largest);
        end loop;
        tables := tables || (
            select jsonb_build_object(
                'table', t.name, 'strategy', t.strategy,
                'key', to_jsonb(t.key),
                'partitions', coalesce((select jsonb_agg(e || jsonb_build_object('share', (e->>'rows')::numeric
                                                         / nullif(s.total, 0))) from jsonb_array_elements(parts) as e), '[]'),
                'total_rows', s.total, 'total_bytes', s.bytes,
                'skew', s.biggest / nullif(s.total::numeric / nullif(s.known, 0), 0),
                'unfinished_splits', to_jsonb(array(select u.description from partman.unfinished(t.rel) as u)),
                'stray_tables', to_jsonb(array(select l.name from partman.loose_tables(t.rel) as l where l.role = 'stray')),
                'retired_tables', to_jsonb(array(select l.name from partman.loose_tables(t.rel) as l where l.role = 'retired')))
            from (select sum((e->>'rows')::bigint) as total, sum((e->>'bytes')::bigint) as bytes,
                         max((e->>'rows')::bigint) as biggest, count(e->>'rows') as known
                  from jsonb_array_elements(parts) as e) as s);
    end loop;
    return tables;
end
$function$;
