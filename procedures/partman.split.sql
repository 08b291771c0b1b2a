-- partman.split(partition, batch_size, pause_ms, lock_timeout_ms, dry_run): split one attached
-- hash partition ('schema.name', or 'name' in schema voting) online into two
-- (partman.split_slice has the plan and why). `pgvote partitions split PARTITION` calls it; so
-- can a migration, inside alembic's autocommit_block() (it commits between its steps).
--
-- Inputs: the partition; rows per copy batch; sleep between batches in ms (throttle on a busy
-- primary); the longest wait for a lock per attempt in ms; dry_run: print the SQL, change
-- nothing. Output: NOTICEs (progress, the result). Errors: PM001 when the name is no partition of
-- a top-level partitioned table, the bound is not hash, the partition is DETACH PENDING, or the
-- table has an unfinished split (finish it first with --resume). Locks: the split session lock
-- (partman.take_split_lock), then those of each step.
create or replace procedure partman.split(partition text, batch_size integer default 5000,
                                          pause_ms double precision default 0, lock_timeout_ms integer default 500,
                                          dry_run boolean default false)
language plpgsql
as $procedure$
declare
    source regclass := pg_catalog.to_regclass(case when pg_catalog.strpos(partition, '.') > 0 then partition
                                                   else 'voting.' || partition end);
    parent regclass;
    part record;
    pending text;
begin
    perform partman.take_split_lock();
    select i.inhparent::regclass into parent from pg_catalog.pg_inherits as i
    join pg_catalog.pg_class as p on p.oid = i.inhparent
    where i.inhrelid = source and not p.relispartition;
    if parent is null then
        perform partman.refuse(pg_catalog.format('%s is not a partition of a top-level partitioned table (names look '
                                                 'like voting.ballots_m16_r3; see `pgvote partitions status`)', partition));
    end if;
    select * into part from partman.partitions(parent) as p where p.part = source;
    if part.kind <> 'hash' then
        perform partman.refuse(pg_catalog.format('%s is a %s partition: only hash partitions can be split', part.name, part.kind));
    elsif part.pending then
        perform partman.refuse(pg_catalog.format('%s is DETACH PENDING: finish it with `pgvote partitions split --resume`',
                                                 part.name));
    end if;
    select u.source into pending from partman.unfinished(parent) as u limit 1;
    if pending is not null then
        perform partman.refuse(pg_catalog.format('%s has an unfinished split (%s): finish it first with '
                                                 '`pgvote partitions split --resume`', parent, pending));
    end if;
    call partman.split_slice(parent, part.modulus, part.remainder, false, batch_size, pause_ms, lock_timeout_ms, dry_run);
    perform partman.release_split_lock();
end
$procedure$;
