-- router.create_poll: PL/Proxy call of shard.create_poll on the shard the new poll id hashes to.
--
-- Inputs    request (router.request_context()), the new poll's id (chosen by api.create_poll), then
--           api.create_poll's arguments. Output shard.create_poll's.
create or replace function router.create_poll(
    request jsonb,
    poll_id uuid,
    question text,
    options text[],
    max_choices integer,
    allow_revote boolean,
    allow_multiple_votes boolean,
    allow_anonymous boolean,
    closes_at timestamptz
) returns jsonb
language plproxy
as $function$
    cluster 'pgvote_shards';
    run on router.poll_shard(poll_id);
    target shard.create_poll;
$function$;
