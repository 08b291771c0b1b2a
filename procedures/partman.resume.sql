-- partman.resume(partition, schema_name, batch_size, pause_ms, lock_timeout_ms, dry_run): finish
-- every unfinished split of the schema's partitioned tables (or only the one whose source is
-- `partition`), as partman.unfinished recognises them: first drop the retired tables of splits
-- killed right after their switch, then carry each split out again from its current state
-- (partman.split_slice: prepare completes what exists, the copy starts again from the first key,
-- ON CONFLICT skipping what is there). A DETACH PENDING source is finished with DETACH ..
-- FINALIZE in the switch, a detached one (a gap) is attached back as its two halves.
--
-- Inputs: the partition (null: all), the schema, the options of partman.split. Output: NOTICEs
-- (progress, one result per split). Errors: PM001 when `partition` has no unfinished split, or a
-- split's source table is missing (its targets cannot be completed automatically).
-- Locks: the split session lock, then those of each split.
create or replace procedure partman.resume(partition text default null, schema_name text default 'voting',
                                           batch_size integer default 5000, pause_ms double precision default 0,
                                           lock_timeout_ms integer default 500, dry_run boolean default false)
language plpgsql
as $procedure$
declare
    wanted text := case when partition is null or pg_catalog.strpos(partition, '.') > 0 then partition
                        else 'voting.' || partition end;
    parents regclass[];
    parent regclass;
    retired text[];
    splits jsonb;
    matched boolean := false;
begin
    perform partman.take_split_lock();
    parents := array(select t.rel from partman.partitioned_tables(schema_name) as t);
    foreach parent in array parents loop
        retired := array(select l.name from partman.loose_tables(parent) as l where l.role = 'retired'
                         and (wanted is null or l.name = wanted || '_split_old'));
        for i in 1 .. coalesce(pg_catalog.array_length(retired, 1), 0) loop
            matched := true;
            call partman.drop_retired(pg_catalog.split_part(retired[i], '.', 1), pg_catalog.split_part(retired[i], '.', 2),
                                      lock_timeout_ms, dry_run);
        end loop;
    end loop;
    select coalesce(jsonb_agg(pg_catalog.to_jsonb(u) || pg_catalog.jsonb_build_object('parent', p::oid)), '[]')
    into splits
    from unnest(parents) as p, partman.unfinished(p) as u where wanted is null or u.source = wanted;
    if wanted is not null and jsonb_array_length(splits) = 0 and not matched then
        perform partman.refuse(pg_catalog.format('no unfinished split of %s (see `pgvote partitions verify`)', wanted));
    end if;
    if jsonb_array_length(splits) = 0 then
        raise notice 'resume: no unfinished split in schema %', schema_name;
    end if;
    for i in 0 .. jsonb_array_length(splits) - 1 loop
        if splits->i->>'state' = 'missing' then
            perform partman.refuse(splits->i->>'description');
        end if;
        call partman.split_slice((splits->i->>'parent')::oid::regclass, (splits->i->>'modulus')::integer,
                                 (splits->i->>'remainder')::integer, true, batch_size, pause_ms, lock_timeout_ms, dry_run);
    end loop;
    perform partman.release_split_lock();
end
$procedure$;
