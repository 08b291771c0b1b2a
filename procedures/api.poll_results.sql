-- api.poll_results: a poll's tallies.  GET or POST /rpc/poll_results
--
-- Output    {"poll_id", "question", "total_ballots", "options": [{"option_id", "label",
--           "votes"}] (option order), "closes_at", "closed"}. Exact: the tally slots are
--           written in each vote's own transaction, so their sum in this snapshot equals
--           the count of stored ballots. Reads at most (live backends + 1) slot rows,
--           however many ballots the poll has. Sets Cache-Control max-age=1 so an HTTP
--           cache may serve it for one second.
-- Errors    poll_not_found 404.
-- STABLE, so PostgREST runs it READ ONLY for GET and POST alike.
create or replace function api.poll_results(poll_id uuid) returns jsonb
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $function$
declare
    poll   voting.polls;
    result jsonb;
begin
    select p.* into poll from voting.polls as p where p.poll_id = poll_results.poll_id;
    if not found then
        perform internal.raise_api_error('poll_not_found', 'There is no poll with this poll_id.');
    end if;

    with slots as (
        select t.ballots, t.votes from voting.tally_slots as t where t.poll_id = poll.poll_id
    ),
    per_position as (
        select v.position, sum(v.votes) as votes
        from slots, unnest(slots.votes) with ordinality as v(votes, position)
        group by v.position
    )
    select jsonb_build_object(
        'poll_id', poll.poll_id,
        'question', poll.question,
        'total_ballots', (select coalesce(sum(slots.ballots), 0) from slots),
        'options', jsonb_agg(jsonb_build_object('option_id', o.option_id, 'label', o.label,
                                                'votes', coalesce(pp.votes, 0))
                             order by o.position),
        'closes_at', poll.closes_at,
        'closed', poll.closed_at is not null or coalesce(poll.closes_at <= now(), false))
    into result
    from voting.poll_options as o
    left join per_position as pp on pp.position = o.position
    where o.poll_id = poll.poll_id;

    perform set_config('response.headers', '[{"Cache-Control": "public, max-age=1"}]', true);
    return result;
end
$function$;
