-- internal.add_to_tally(poll_id, ballots_delta, votes_delta): add counts to the calling
-- backend's own tally slot of the poll.
--
-- votes_delta[i] is the change of the option at position i (see internal.ballot_delta);
-- ballots_delta the change of the ballot count. The slot is this backend's pid, which no
-- other live backend has, so the row lock taken here is never waited for by another
-- voter: no hot row, however viral the poll. Runs in the vote's transaction, so tallies
-- are exact. Update first: after a backend's first vote on a poll its row exists, and a
-- plain UPDATE (HOT, fillfactor 50) is the cheapest path.
create or replace function internal.add_to_tally(
    poll_id uuid,
    ballots_delta bigint,
    votes_delta bigint[]
) returns void
language plpgsql
as $function$
begin
    update voting.tally_slots as t
    set ballots = t.ballots + ballots_delta,
        votes = internal.add_vectors(t.votes, votes_delta)
    where t.poll_id = add_to_tally.poll_id and t.slot = pg_backend_pid();
    if not found then
        insert into voting.tally_slots as t (poll_id, slot, ballots, votes)
        values (add_to_tally.poll_id, pg_backend_pid(), ballots_delta, votes_delta)
        on conflict on constraint tally_slots_pkey do update
        set ballots = t.ballots + excluded.ballots,
            votes = internal.add_vectors(t.votes, excluded.votes);
    end if;
end
$function$;
