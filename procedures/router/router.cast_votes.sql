-- router.cast_votes: a cast_votes batch split by shard, every part sent to its shard in parallel.
--
-- Inputs    request (router.request_context), then per ballot of the batch: its hash
--           (router.poll_hashes), the ballot, its ordinal in the batch; arrays of one length.
--           PL/Proxy's SPLIT gives each shard its own elements of the three, in input order; the
--           hashes were computed by the caller in one statement (a RUN ON function would be a
--           query of its own per ballot).
-- Output    every shard's rows of shard.cast_votes: (ordinal, result), in no particular order.
create or replace function router.cast_votes(request jsonb, hashes integer[], ballots jsonb[], ordinals integer[])
returns table (ordinal integer, result jsonb)
language plproxy
as $function$
    cluster 'pgvote_shards';
    split hashes, ballots, ordinals;
    run on hashes;
    select c.ordinal, c.result from shard.cast_votes(request, ballots, ordinals) as c;
$function$;
