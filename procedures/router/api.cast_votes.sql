-- api.cast_votes on the router: a batch split by shard, outcomes back in input order.
--           POST /rpc/cast_votes
--
-- Inputs    as procedures/api.cast_votes.sql.
-- Output    the single node's shape: counts and one result per input ballot, in input order. Each
--           shard's part is that shard's api.cast_votes (its checks, precedence and in-batch order:
--           all ballots of one poll are on one shard, in input order).
-- Errors    invalid_ballot 400 for the whole call (internal.check_ballot_batch, nothing sent);
--           shard_unavailable when a shard of the batch cannot be reached (router.forward_error).
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
    results jsonb := '[]'::jsonb;
    state text; message text; detail text; hint text;
begin
    perform internal.check_ballot_batch(ballots);
    if jsonb_array_length(ballots) > 0 then  -- PL/Proxy's SPLIT of empty arrays runs nowhere
        with input as (
            select array_agg(router.ballot_shard(e.b) order by e.n) as hashes, array_agg(e.b order by e.n) as items,
                   array_agg(e.n::integer order by e.n) as ordinals
            from jsonb_array_elements(ballots) with ordinality as e(b, n)
        ), r as (
            select c.* from input as i, router.cast_votes(router.request_context(), i.hashes, i.items, i.ordinals) as c
        )
        select (select jsonb_agg(r.result order by r.ordinal) from r),
               counts || coalesce((select jsonb_object_agg(c.status, c.n)
                                   from (select r.result ->> 'status' as status, count(*) as n
                                         from r group by 1) as c), '{}')
        into results, counts;
    end if;
    return counts || jsonb_build_object('results', results);
exception when others then
    get stacked diagnostics state = returned_sqlstate, message = message_text, detail = pg_exception_detail,
                            hint = pg_exception_hint;
    perform router.forward_error(state, message, detail, hint);
    return null;  -- not reached: forward_error always raises
end
$function$;
