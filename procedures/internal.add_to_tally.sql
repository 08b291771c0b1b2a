-- internal.add_to_tally(poll_id, option_count, added, removed, ballots_delta): count a
-- ballot change in the calling backend's own tally slot of the poll.
--
-- added/removed are option positions (a recorded ballot adds its options and one ballot;
-- a revote adds the new options and removes the old ones). The slot is this backend's
-- pid, which no other live backend has, so the row lock taken here is never waited for
-- by another voter: no hot row, however viral the poll. Runs in the vote's transaction,
-- so the tallies are exact. Update first: after a backend's first vote on a poll its
-- row exists, and a plain UPDATE (HOT, fillfactor 50) is the cheapest path.
create or replace function internal.add_to_tally(
    poll_id uuid,
    option_count integer,
    added smallint[],
    removed smallint[],
    ballots_delta integer
) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $function$
declare
    delta bigint[] := array(
        select (p = any (added))::integer - (p = any (coalesce(removed, '{}')))::integer
        from generate_series(1, option_count) as p);
begin
    update voting.tally_slots as t
    set ballots = t.ballots + ballots_delta,
        votes = internal.add_vectors(t.votes, delta)
    where t.poll_id = add_to_tally.poll_id and t.slot = pg_backend_pid();
    if not found then
        insert into voting.tally_slots as t (poll_id, slot, ballots, votes)
        values (add_to_tally.poll_id, pg_backend_pid(), ballots_delta, delta)
        on conflict on constraint tally_slots_pkey do update
        set ballots = t.ballots + excluded.ballots,
            votes = internal.add_vectors(t.votes, excluded.votes);
    end if;
end
$function$;
