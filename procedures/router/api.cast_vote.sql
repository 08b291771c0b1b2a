-- api.cast_vote on the router: the vote of procedures/api.cast_vote.sql, run on the poll's shard.
--           POST /rpc/cast_vote
--
-- Inputs    as procedures/api.cast_vote.sql (the same signature: the same HTTP contract).
-- Output    the shard's api.cast_vote answer.
-- Errors    the single node's, with their status and code (router.forward_error); rate_limited per
--           caller comes from this database's pre-request hook, before this runs; shard_unavailable
--           502 with Retry-After when the poll's shard cannot be reached (router.forward_error).
-- Identity  derived here from the verified JWT (router.request_context) and passed on: the shard
--           sets it for its call only (internal.adopt_request).
-- Locks     none here; the shard's api.cast_vote takes the poll's fence.
create or replace function api.cast_vote(
    poll_id uuid,
    option_ids uuid[],
    voter_fingerprint text default null,
    ballot_id uuid default null
) returns jsonb
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
            return router.cast_vote(router.request_context(), poll_id, option_ids, voter_fingerprint, ballot_id);
        exception when others then
            get stacked diagnostics state = returned_sqlstate, message = message_text, detail = pg_exception_detail,
                                    hint = pg_exception_hint;
            continue when router.retry_or_forward(attempt, poll_id, state, message, detail, hint);
        end;
    end loop;
    return null;  -- not reached: each attempt returns or raises
end
$function$;
