-- partman.verify(schema_name): findings for every top-level partitioned table of a schema: each
-- hash space is covered exactly once (partman.coverage names every gap and overlap as slices),
-- nothing hides in a default partition, no partition is DETACH PENDING, no split was left
-- unfinished (a running one is a note), plus notes for retired and stray tables.
--
-- Inputs: the schema. Output: (tbl, severity, message) rows, severity 'problem', 'note' or 'ok';
-- healthy when no row is a problem (`pgvote partitions verify` exits 1 otherwise). A schema
-- without a partitioned table is a problem. Errors: none. Locks: none.
create or replace function partman.verify(schema_name text)
returns table (tbl text, severity text, message text)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $function$
declare
    t record;
    p record;
    f record;
    problems integer;
begin
    for t in select * from partman.partitioned_tables(schema_name) loop
        tbl := t.name;
        for p in select * from partman.partitions(t.rel) loop
            if p.kind = 'default' then
                severity := 'problem';
                message := format('default partition %s: rows that fit no other partition hide there '
                                  '(hash tables cannot have one; a list/range table should not)', p.name);
                return next;
            end if;
            if p.sub_partitioned then
                severity := 'note';
                message := format('%s is itself partitioned: its own partitions are not checked', p.name);
                return next;
            end if;
        end loop;
        if t.strategy <> 'hash' then
            severity := 'note';
            message := format('%s-partitioned: hash coverage does not apply', t.strategy);
            return next;
            continue;
        end if;
        problems := 0;
        for f in select c.* from partman.coverage(
                     array(select q.name from partman.partitions(t.rel) as q where q.kind = 'hash' and not q.pending),
                     array(select q.modulus from partman.partitions(t.rel) as q where q.kind = 'hash' and not q.pending),
                     array(select q.remainder from partman.partitions(t.rel) as q where q.kind = 'hash' and not q.pending))
                 as c loop
            problems := problems + 1;
            severity := 'problem';
            message := case f.kind
                when 'gap' then format('gap: no partition covers (modulus %s, remainder %s) (%s%% of the hash space): '
                                       'inserts there fail with "no partition of relation found for row"',
                                       f.modulus, f.remainder, round(100.0 / f.modulus, 2))
                when 'overlap' then format('overlap: %s and %s both cover (modulus %s, remainder %s)',
                                           f.first, f.second, f.modulus, f.remainder)
                else format('invalid hash bound %s', f.first) end;
            return next;
        end loop;
        for f in select * from partman.unfinished(t.rel) loop
            severity := case when f.running is null then 'problem' else 'note' end;
            message := f.description;
            return next;
        end loop;
        for p in select * from partman.partitions(t.rel) as q
                 where q.pending and not exists (select from partman.unfinished(t.rel) as u where u.source_rel = q.part) loop
            severity := 'problem';
            message := format('%s is DETACH PENDING: inserts for its slice fail', p.name);
            return next;
        end loop;
        for f in select * from partman.loose_tables(t.rel) as l where l.role in ('retired', 'stray') loop
            severity := 'note';
            message := case f.role
                when 'retired' then format('%s is the old partition of a finished split, not dropped yet '
                                           '(`pgvote partitions split --resume` drops it)', f.name)
                else format('%s is named like a partition of %s but is not attached', f.name, t.name) end;
            return next;
        end loop;
        if problems = 0 then
            severity := 'ok';
            select format('%s hash partitions (modulus %s) cover the hash space exactly once', sum(m.n),
                          string_agg(m.modulus::text, ', ' order by m.modulus))
            into message from (select q.modulus, count(*) as n from partman.partitions(t.rel) as q
                               where q.kind = 'hash' and not q.pending group by 1) as m;
            return next;
        end if;
    end loop;
    if tbl is null then
        return query select schema_name, 'problem'::text, format('no partitioned table in schema %s', schema_name);
    end if;
end
$function$;
