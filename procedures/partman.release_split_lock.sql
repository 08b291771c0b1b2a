-- partman.release_split_lock(): the end of a split session (partman.take_split_lock): releases
-- the session advisory lock and gives the session back its plain name.
--
-- Inputs: none. Output: none. Errors: none. Locks: releases the split session lock.
create or replace function partman.release_split_lock() returns void
language sql
set search_path = pg_catalog, pg_temp
as $function$
    select pg_advisory_unlock(internal.advisory_lock_namespace('partition_split'), 0);
    select set_config('application_name', 'pgvote partitions', false);
$function$;
