-- router.cast_vote: PL/Proxy call of shard.cast_vote on the shard that holds the poll.
--
-- Inputs    request (router.request_context()), then api.cast_vote's arguments. Output shard.cast_vote's.
-- Errors    the shard's, with PL/Proxy's prefixes (router.forward_error removes them); a shard it
--           cannot reach is an XX000 "REMOTE ERROR" or a connection-class error.
create or replace function router.cast_vote(
    request jsonb,
    poll_id uuid,
    option_ids uuid[],
    voter_fingerprint text,
    ballot_id uuid
) returns jsonb
language plproxy
as $function$
    cluster 'pgvote_shards';
    run on router.poll_shard(poll_id);
    target shard.cast_vote;
$function$;
