-- api.poll_results on the router: procedures/api.poll_results.sql, run on the poll's shard.
--           GET or POST /rpc/poll_results
--
-- Output    the shard's answer (exact in the shard's snapshot); Cache-Control max-age=1 set here,
--           since a header set on the shard stays on PL/Proxy's connection.
-- Errors    poll_not_found 404, shard_unavailable (router.forward_error).
-- STABLE, so PostgREST runs it READ ONLY, as on a single node.
create or replace function api.poll_results(poll_id uuid) returns jsonb
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $function$
declare
    result jsonb;
    state text; message text; detail text; hint text;
begin
    for attempt in 1 .. 2 loop
        begin
            result := router.poll_results(poll_id);
            perform set_config('response.headers', '[{"Cache-Control": "public, max-age=1"}]', true);
            return result;
        exception when others then
            get stacked diagnostics state = returned_sqlstate, message = message_text, detail = pg_exception_detail,
                                    hint = pg_exception_hint;
            continue when router.retry_or_forward(attempt, poll_id, state, message, detail, hint);
        end;
    end loop;
    return null;  -- not reached: each attempt returns or raises
end
$function$;
