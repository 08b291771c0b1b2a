-- shard.close_poll: api.close_poll on the shard that holds the poll, for the router.
--
-- Inputs    request: the router-derived request (see shard.cast_vote); poll_id.
-- Output    api.close_poll's answer.
-- Errors    api.close_poll's (poll_not_found, login_required, not_poll_creator).
-- Locks     api.close_poll's: the poll's fence, on this shard, where every vote of the poll runs.
create or replace function shard.close_poll(request jsonb, poll_id uuid) returns jsonb
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $function$
begin
    perform internal.adopt_request(request);
    return api.close_poll(poll_id);
end
$function$;
