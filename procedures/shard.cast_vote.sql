-- shard.cast_vote: api.cast_vote on a shard, for the router (procedures/router/api.cast_vote.sql).
--
-- Inputs    request: what the router derived from the HTTP request (router.request_context): the
--           verified JWT's {"role", "sub"}, the method, read-only or not; then api.cast_vote's
--           arguments.
-- Output    api.cast_vote's answer.
-- Errors    api.cast_vote's, raised here and forwarded by the router with their status and code.
-- Why       PL/Proxy calls a shard over a connection of its own, without PostgREST's
--           transaction-local settings: internal.adopt_request sets them again, for this call only,
--           so api.cast_vote itself (the one implementation of the vote) decides as on a single
--           node. Only pgvote_router may execute this (db/grants.sql): nobody else can vote as
--           somebody else through it. Rate limits per caller are the router's pre-request hook;
--           the per-fingerprint limit of multiple-vote polls is taken here, where the poll lives.
create or replace function shard.cast_vote(
    request jsonb,
    poll_id uuid,
    option_ids uuid[],
    voter_fingerprint text,
    ballot_id uuid
) returns jsonb
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $function$
begin
    perform internal.adopt_request(request);
    return api.cast_vote(poll_id, option_ids, voter_fingerprint, ballot_id);
end
$function$;
