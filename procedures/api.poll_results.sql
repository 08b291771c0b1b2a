-- api.poll_results: a poll's tallies.  GET or POST /rpc/poll_results
--
-- Output    {"poll_id", "question", "total_ballots", "options": [{"option_id", "label",
--           "votes"}] (option order), "closes_at", "closed"}. Exact: counted from the
--           stored ballots in this statement's snapshot. Sets Cache-Control max-age=1
--           so an HTTP cache may serve it for one second.
-- Errors    poll_not_found 404.
-- STABLE, so PostgREST runs it READ ONLY for GET and POST alike; it reads one ballots
-- partition (poll_id is the partition key).
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

    with poll_ballots as materialized (
        select b.option_ids from voting.ballots as b where b.poll_id = poll.poll_id
    ),
    votes_per_option as (
        select chosen.option_id, count(*) as votes
        from poll_ballots, unnest(poll_ballots.option_ids) as chosen(option_id)
        group by chosen.option_id
    )
    select jsonb_build_object(
        'poll_id', poll.poll_id,
        'question', poll.question,
        'total_ballots', (select count(*) from poll_ballots),
        'options', jsonb_agg(jsonb_build_object('option_id', o.option_id, 'label', o.label,
                                                'votes', coalesce(v.votes, 0))
                             order by o.position),
        'closes_at', poll.closes_at,
        'closed', poll.closed_at is not null or coalesce(poll.closes_at <= now(), false))
    into result
    from voting.poll_options as o
    left join votes_per_option as v on v.option_id = o.option_id
    where o.poll_id = poll.poll_id;

    perform set_config('response.headers', '[{"Cache-Control": "public, max-age=1"}]', true);
    return result;
end
$function$;
