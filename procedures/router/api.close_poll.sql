-- api.close_poll on the router: procedures/api.close_poll.sql, run on the poll's shard.
--           POST /rpc/close_poll
--
-- Output    the shard's answer. Errors the single node's (poll_not_found, login_required,
--           not_poll_creator), and shard_unavailable (router.forward_error).
-- Identity  the caller's JWT sub, derived here (router.request_context), checked on the shard.
-- Locks     the poll's fence, on its shard, where every vote of the poll runs.
create or replace function api.close_poll(poll_id uuid) returns jsonb
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $function$
declare
    state text; message text; detail text; hint text;
begin
    for attempt in 1 .. 2 loop
        begin
            return router.close_poll(router.request_context(), poll_id);
        exception when others then
            get stacked diagnostics state = returned_sqlstate, message = message_text, detail = pg_exception_detail,
                                    hint = pg_exception_hint;
            continue when router.retry_or_forward(attempt, poll_id, state, message, detail, hint);
        end;
    end loop;
    return null;  -- not reached: each attempt returns or raises
end
$function$;
