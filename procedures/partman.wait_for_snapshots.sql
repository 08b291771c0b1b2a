-- partman.wait_for_snapshots(seconds): step 3 of a split. Transactions that took their snapshot
-- before the last copy batch committed would see the old partition's rows but not (all of) their
-- copies; the switch waits until they are gone, as CREATE INDEX CONCURRENTLY does, but bounded:
-- after `seconds` it goes on with a warning (a REPEATABLE READ transaction among them may miss
-- copied rows). pg_stat_activity is read afresh each round (pg_stat_clear_snapshot: a transaction
-- otherwise sees the first reading again).
--
-- Inputs: the longest wait. Output: none. Errors: none. Locks: none.
create or replace function partman.wait_for_snapshots(seconds double precision) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $function$
declare
    waiting text[];
    started timestamptz := clock_timestamp();
    older constant text := $q$
        select array(select pid || '@' || xact_start from pg_stat_activity
                     where datname = current_database() and pid <> pg_backend_pid() and backend_type = 'client backend'
                       and backend_xmin is not null and xact_start is not null)$q$;
    now_open text[];
begin
    execute older into waiting;
    while cardinality(waiting) > 0 loop
        perform pg_sleep(0.01);
        perform pg_stat_clear_snapshot();
        execute older into now_open;
        waiting := array(select w from unnest(waiting) as w where w = any (now_open));
        if cardinality(waiting) > 0 and clock_timestamp() > started + make_interval(secs => seconds) then
            raise warning 'snapshots: % transaction(s) older than the copy are still open after % s (%); switching '
                          'anyway: a REPEATABLE READ one among them may miss copied rows',
                cardinality(waiting), seconds, array_to_string(waiting, ', ');
            return;
        end if;
    end loop;
    raise notice 'snapshots: older transactions gone after % ms', round(extract(epoch from clock_timestamp() - started) * 1000);
end
$function$;
