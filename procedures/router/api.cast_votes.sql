-- api.cast_votes on the router: a batch split by shard, outcomes back in input order.
--           POST /rpc/cast_votes
--
-- Inputs    as procedures/api.cast_votes.sql.
-- Output    the single node's shape: counts and one result per input ballot, in input order. Each
--           shard's part is that shard's api.cast_votes (its checks, precedence and in-batch order:
--           all ballots of one poll are on one shard, in input order).
-- Errors    invalid_ballot 400 for the whole call (internal.check_ballot_batch, nothing sent);
--           shard_unavailable when a shard of the batch cannot be reached (router.forward_error).
-- Growth    the ballots of a poll a growth moved meanwhile (rejected poll_not_found by its old shard)
--           are sent once more, to the grown cluster (router.moved, pgvote/grow.py).
-- Atomicity per shard: the shards' parts run in parallel, each in its own transaction; when one
--           fails the others may have committed. An identical retry is safe (stored ballots answer
--           unchanged), as after a timeout on a single node.
create or replace function api.cast_votes(ballots jsonb) returns jsonb
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $function$
declare
    counts  jsonb := '{"recorded": 0, "changed": 0, "unchanged": 0, "rejected": 0}'::jsonb;
    outcome jsonb := '{}'::jsonb;  -- ordinal -> result
    pending integer[];             -- the ordinals still to send
    missing jsonb;                 -- ordinal -> poll id of the ballots a shard answered poll_not_found
    state text; message text; detail text; hint text;
begin
    perform internal.check_ballot_batch(ballots);
    pending := array(select g::integer from generate_series(1, jsonb_array_length(ballots)) as g);
    -- One PL/Proxy call for the batch; a second for the ballots whose poll a growth moved while the
    -- first waited on its old shard (poll_not_found there).
    for attempt in 1 .. 2 loop
        exit when cardinality(pending) = 0;  -- PL/Proxy's SPLIT of empty arrays runs nowhere
        with input as (
            select p.n, ballots -> (p.n - 1) as b, router.ballot_poll(ballots -> (p.n - 1)) as poll_id
            from unnest(pending) as p(n)
        ), hashed as (  -- a ballot without a readable poll id is invalid on every shard: any will do
            select i.n, i.b, i.poll_id, coalesce(h.hash, 0) as hash
            from input as i
            left join router.poll_hashes(array(select distinct i2.poll_id from input as i2
                                               where i2.poll_id is not null)) as h on h.poll_id = i.poll_id
        ), batch as (
            select array_agg(x.hash order by x.n) as hashes, array_agg(x.b order by x.n) as items,
                   array_agg(x.n order by x.n) as ordinals, jsonb_object_agg(x.n::text, x.poll_id) as polls
            from hashed as x
        ), answered as (
            select c.ordinal, c.result, k.polls ->> c.ordinal::text as poll_id
            from batch as k, router.cast_votes(router.request_context(), k.hashes, k.items, k.ordinals) as c
        )
        select outcome || coalesce(jsonb_object_agg(a.ordinal::text, a.result), '{}'),
               coalesce(jsonb_object_agg(a.ordinal::text, a.poll_id)
                            filter (where attempt = 1 and a.result ->> 'code' = 'poll_not_found'), '{}')
        into outcome, missing
        from answered as a;
        -- A statement of its own, so a snapshot of its own: it sees a move committed while the call waited.
        pending := array(select m.key::integer from jsonb_each_text(missing) as m
                         where exists (select from router.moved as r where r.poll_id = m.value::uuid)
                         order by 1);
    end loop;
    select counts || coalesce(jsonb_object_agg(c.status, c.n), '{}')
    into counts
    from (select o.value ->> 'status' as status, count(*) as n from jsonb_each(outcome) as o group by 1) as c;
    return counts || jsonb_build_object('results', coalesce(
        (select jsonb_agg(o.value order by o.key::integer) from jsonb_each(outcome) as o), '[]'::jsonb));
exception when others then
    get stacked diagnostics state = returned_sqlstate, message = message_text, detail = pg_exception_detail,
                            hint = pg_exception_hint;
    perform router.forward_error(state, message, detail, hint);
    return null;  -- not reached: forward_error always raises
end
$function$;
