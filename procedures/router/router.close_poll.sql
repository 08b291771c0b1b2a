-- router.close_poll: PL/Proxy call of shard.close_poll on the shard that holds the poll.
create or replace function router.close_poll(request jsonb, poll_id uuid) returns jsonb
language plproxy
as $function$
    cluster 'pgvote_shards';
    run on router.poll_shard(poll_id);
    target shard.close_poll;
$function$;
