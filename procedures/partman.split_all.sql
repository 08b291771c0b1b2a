-- partman.split_all(table_name, schema_name, batch_size, pause_ms, lock_timeout_ms, dry_run):
-- double every partition of one table (or of every hash-partitioned table of the schema), one
-- partition at a time, each as partman.split does (16 -> 32 partitions from a migration:
-- `call partman.split_all('voting.ballots')` inside alembic's autocommit_block()).
--
-- Inputs: the table ('schema.table', null: every hash-partitioned table of schema_name), the
-- options of partman.split. Output: NOTICEs (progress, one result per split). Errors: PM001 when
-- the table is no partitioned table, the schema has none, a table has an unfinished split or a
-- DETACH PENDING partition (finish them with --resume first). Locks: the split session lock, then
-- those of each split.
create or replace procedure partman.split_all(table_name text default null, schema_name text default 'voting',
                                              batch_size integer default 5000, pause_ms double precision default 0,
                                              lock_timeout_ms integer default 500, dry_run boolean default false)
language plpgsql
as $procedure$
declare
    tables regclass[];
    parent regclass;
    slices integer[];
    blocker text;
begin
    perform partman.take_split_lock();
    if table_name is not null then
        tables := array(select c.oid::regclass from pg_catalog.pg_partitioned_table as pt
                        join pg_catalog.pg_class as c on c.oid = pt.partrelid
                        where c.oid = pg_catalog.to_regclass(table_name) and not c.relispartition);
        if cardinality(tables) = 0 then
            perform partman.refuse(pg_catalog.format('%s is not a partitioned table', table_name));
        end if;
    else
        tables := array(select t.rel from partman.partitioned_tables(schema_name) as t where t.strategy = 'hash');
        if cardinality(tables) = 0 then
            perform partman.refuse(pg_catalog.format('no hash-partitioned table in schema %s', schema_name));
        end if;
    end if;
    foreach parent in array tables loop
        select coalesce((select pg_catalog.format('%s has an unfinished split (%s): finish it first with '
                                                  '`pgvote partitions split --resume`', parent, u.source)
                         from partman.unfinished(parent) as u limit 1),
                        (select pg_catalog.format('%s is DETACH PENDING: run `pgvote partitions split --resume` first',
                                                  p.name) from partman.partitions(parent) as p where p.pending limit 1))
        into blocker;
        if blocker is not null then
            perform partman.refuse(blocker);
        end if;
        -- the list as it was before the first split
        slices := array(select array[p.modulus, p.remainder] from partman.partitions(parent) as p where p.kind = 'hash');
        raise notice 'split --all: %, % partitions to double', parent, coalesce(pg_catalog.array_length(slices, 1), 0);
        for i in 1 .. coalesce(pg_catalog.array_length(slices, 1), 0) loop
            raise notice 'split --all: %/%', i, pg_catalog.array_length(slices, 1);
            call partman.split_slice(parent, slices[i][1], slices[i][2], false, batch_size, pause_ms, lock_timeout_ms,
                                     dry_run);
        end loop;
    end loop;
    perform partman.release_split_lock();
end
$procedure$;
