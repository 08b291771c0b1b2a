-- partman.split_holder(): the session running a split in this database, if any: the holder of
-- the session advisory lock (internal.advisory_lock_namespace('partition_split'), 0) that every
-- split procedure takes (partman.take_split_lock). It tells a running split (a note) from an
-- interrupted one (a problem); application_name says which partition it works on
-- ('pgvote split <schema.partition>').
--
-- Inputs: none. Output: zero or one row (pid, application_name). Errors: none. Locks: none.
create or replace function partman.split_holder() returns table (pid integer, application_name text)
language sql
stable
set search_path = pg_catalog, pg_temp
as $function$
    select l.pid, coalesce(a.application_name, '')
    from pg_locks as l
    left join pg_stat_activity as a on a.pid = l.pid
    where l.locktype = 'advisory' and l.granted
      and l.database = (select oid from pg_database where datname = current_database())
      and l.classid::bigint = internal.advisory_lock_namespace('partition_split')
      and l.objid::bigint = 0 and l.objsubid = 2
    limit 1
$function$;
