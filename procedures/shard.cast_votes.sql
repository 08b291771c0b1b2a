-- shard.cast_votes: the part of a cast_votes batch whose polls hash to this shard.
--
-- Inputs    request: the router-derived request (see shard.cast_vote); ballots: the batch's
--           ballots for this shard, in input order (PL/Proxy's SPLIT of the router's batch);
--           ordinals: each one's position in the router's batch.
-- Output    one row per ballot: its ordinal and its element of api.cast_votes' "results".
-- Errors    none of its own: api.cast_votes rejects ballots one by one; a server error aborts this
--           shard's part of the batch (other shards' parts commit on their own: the router says so).
-- Why       api.cast_votes is the one implementation of the batch (its set-wise checks, key-order
--           locks, in-batch order); the router puts the shards' answers back in input order.
create or replace function shard.cast_votes(request jsonb, ballots jsonb[], ordinals integer[])
returns table (ordinal integer, result jsonb)
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $function$
begin
    perform internal.adopt_request(request);
    return query
    select o.ordinal, r.result
    from jsonb_array_elements(api.cast_votes(to_jsonb(ballots)) -> 'results') with ordinality as r(result, n)
    join unnest(ordinals) with ordinality as o(ordinal, n) using (n);
end
$function$;
