-- router.cast_votes: a cast_votes batch split by shard, every part sent to its shard in parallel.
--
-- Inputs    request (router.request_context), then the ballots and their ordinals in the batch, as
--           arrays of the same length. PL/Proxy's
--           SPLIT evaluates router.ballot_shard per ballot and gives each shard its own ballots,
--           in input order, with their ordinals.
-- Output    every shard's rows of shard.cast_votes: (ordinal, result), in no particular order.
create or replace function router.cast_votes(request jsonb, ballots jsonb[], ordinals integer[])
returns table (ordinal integer, result jsonb)
language plproxy
as $function$
    cluster 'pgvote_shards';
    split ballots, ordinals;
    run on router.ballot_shard(ballots);
    target shard.cast_votes;
$function$;
