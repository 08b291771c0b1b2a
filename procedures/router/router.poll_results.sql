-- router.poll_results: PL/Proxy call of shard.poll_results on the shard that holds the poll.
create or replace function router.poll_results(poll_id uuid) returns jsonb
language plproxy
as $function$
    cluster 'pgvote_shards';
    run on router.poll_shard(poll_id);
    target shard.poll_results;
$function$;
