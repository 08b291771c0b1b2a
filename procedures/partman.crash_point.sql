-- partman.crash_point(point): fault injection for the tests of interrupted splits. When the
-- custom setting partman.crash_at names `point` (`PGOPTIONS='-c partman.crash_at=batch:3'`),
-- the backend terminates itself here, exactly as if the server process running the split had
-- been killed: its open transaction is rolled back, what it committed stays, its session
-- advisory lock is released. Points: 'batch:N' after the N-th committed copy batch, 'switch'
-- inside the switch transaction after its first statement (the DETACH), 'after-switch' between
-- the switch's commit and the drop of the retired table.
--
-- Inputs: the point's name. Output: none, or the session ends (FATAL, no handler can catch it).
-- Errors: none. Locks: none.
create or replace function partman.crash_point(point text) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $function$
begin
    if current_setting('partman.crash_at', true) = point then
        raise warning 'partman.crash_at = %: terminating this backend now', point;
        perform pg_terminate_backend(pg_backend_pid());
        perform pg_sleep(60);  -- the termination is taken at the sleep's first interrupt check
    end if;
end
$function$;
