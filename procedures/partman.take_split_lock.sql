-- partman.take_split_lock(): one split at a time per database. Takes the session advisory lock
-- (internal.advisory_lock_namespace('partition_split'), 0), waiting up to 10 s for another split
-- session to end, and names the session 'pgvote split' (application_name). The lock is a
-- session lock, so the caller must reach PostgreSQL directly, not through PgBouncer's
-- transaction pooling. Released by partman.release_split_lock, or when the session ends (a
-- refusal or a crash ends the CLI's session).
--
-- Inputs: none. Output: none. Errors: PM001 when another split still runs after 10 s.
-- Locks: the session advisory lock above.
create or replace function partman.take_split_lock() returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $function$
declare
    deadline timestamptz := clock_timestamp() + interval '10 s';
    holder record;
begin
    -- advisory locks stack: a session that kept the lock (its previous split failed) must not take it twice
    if exists (select from partman.split_holder() as h where h.pid = pg_backend_pid()) then
        perform set_config('application_name', 'pgvote split', false);
        return;
    end if;
    while not pg_try_advisory_lock(internal.advisory_lock_namespace('partition_split'), 0) loop
        if clock_timestamp() > deadline then
            select * into holder from partman.split_holder();
            perform partman.refuse(format('another split is running (%s): wait for it, or end that session',
                                          coalesce(format('pid %s, %L', holder.pid, holder.application_name),
                                                   'a session that just ended')));
        end if;
        perform pg_sleep(0.1);
    end loop;
    perform set_config('application_name', 'pgvote split', false);
end
$function$;
