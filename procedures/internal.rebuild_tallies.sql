-- internal.rebuild_tallies(poll_id): recount a poll's tallies from its stored ballots,
-- the ground truth; returns {"poll_id", "ballots", "votes": [per option position]}.
--
-- Holds the poll's close fence EXCLUSIVE (internal.poll_fence_lock_key) while it recounts, so
-- no vote of that poll commits in between; voters of the poll wait for the recount
-- (about a second per million ballots), other polls are not affected. Before that it takes
-- the tally_maintenance lock (internal.advisory_lock_namespace) that compact_tally_slots
-- also takes: a compaction merging retired slots into slot 0 while this deletes and
-- re-creates slot 0 would make one of them fail with a duplicate key.
create or replace function internal.rebuild_tallies(poll_id uuid) returns jsonb
language plpgsql
set search_path = pg_catalog, pg_temp
as $function$
declare
    recount voting.tally_slots;
begin
    perform pg_advisory_xact_lock(internal.advisory_lock_namespace('tally_maintenance'), 0);
    perform pg_advisory_xact_lock(internal.advisory_lock_namespace('poll_fence'),
                                  internal.poll_fence_lock_key(rebuild_tallies.poll_id));
    delete from voting.tally_slots as t where t.poll_id = rebuild_tallies.poll_id;

    insert into voting.tally_slots (poll_id, slot, ballots, votes)
    select p.poll_id, 0,
           (select count(*) from voting.ballots as b where b.poll_id = p.poll_id),
           array(select count(b.poll_id)
                 from voting.poll_options as o
                 left join voting.ballots as b on b.poll_id = o.poll_id and o.option_id = any (b.option_ids)
                 where o.poll_id = p.poll_id
                 group by o.position order by o.position)
    from voting.polls as p
    where p.poll_id = rebuild_tallies.poll_id
    returning * into recount;

    return jsonb_build_object('poll_id', recount.poll_id, 'ballots', recount.ballots, 'votes', to_jsonb(recount.votes));
end
$function$;
