-- internal.record_ballot(poll, voter_key, ballot_key, ballot, positions): store a VALID
-- ballot and count it; returns recorded | changed | unchanged | already_voted.
--
-- The write half shared by cast_vote and cast_votes; callers have validated the poll
-- (open), the voter and the ballot (internal.normalize_ballot) and hold the poll's fence
-- in SHARE mode. ballot_key is the nil uuid on single-ballot polls (one ballot per voter
-- through the primary key), the retry key or a random uuid on multiple-vote polls.
-- already_voted is returned, not raised, so a batch can report it per ballot; nothing is
-- written in that case, nor for unchanged.
-- Locks: the voter's own ballot row (revote only) and this backend's own tally slot.
create or replace function internal.record_ballot(
    poll voting.polls,
    voter_key bytea,
    ballot_key uuid,
    ballot uuid[],
    positions smallint[],
    out outcome text,
    out stored uuid[]
)
language plpgsql
as $function$
begin
    stored := ballot;
    insert into voting.ballots (poll_id, voter_key, ballot_id, option_ids)
    values (poll.poll_id, record_ballot.voter_key, ballot_key, ballot)
    on conflict on constraint ballots_pkey do nothing;
    if found then
        outcome := 'recorded';
        if cardinality(positions) = 1 then
            -- The common case, one option, once this backend's slot of the poll exists: one
            -- element update, no vector arithmetic (see internal.add_to_tally).
            update voting.tally_slots as t
            set ballots = t.ballots + 1, votes[positions[1]] = t.votes[positions[1]] + 1
            where t.poll_id = poll.poll_id and t.slot = pg_backend_pid();
            if found then
                return;
            end if;
        end if;
        perform internal.add_to_tally(poll.poll_id, 1, internal.ballot_delta(poll.option_count, positions));
        return;
    end if;

    -- The conflicting ballot is committed (ON CONFLICT waited for it) or is this
    -- transaction's own, and ballots are never deleted, so this fresh snapshot sees it.
    -- No lock yet: an identical re-cast must write nothing, not even a row lock.
    select b.option_ids into strict stored
    from voting.ballots as b
    where b.poll_id = poll.poll_id and b.voter_key = record_ballot.voter_key and b.ballot_id = ballot_key;

    if stored = ballot or poll.allow_multiple_votes then
        outcome := 'unchanged';
    elsif not poll.allow_revote then
        outcome := 'already_voted';
    else
        -- Revote: lock the voter's own row, then re-read it, since a concurrent revote
        -- of the same voter may have committed since the read above.
        select b.option_ids into strict stored
        from voting.ballots as b
        where b.poll_id = poll.poll_id and b.voter_key = record_ballot.voter_key and b.ballot_id = ballot_key
        for update;
        if stored = ballot then
            outcome := 'unchanged';
        else
            update voting.ballots as b
            set option_ids = ballot, changed_at = now()
            where b.poll_id = poll.poll_id and b.voter_key = record_ballot.voter_key and b.ballot_id = ballot_key;
            perform internal.add_to_tally(poll.poll_id, 0, internal.ballot_delta(poll.option_count, positions,
                array(select o.position from voting.poll_options as o
                      where o.poll_id = poll.poll_id and o.option_id = any (stored))));
            outcome := 'changed';
            stored := ballot;
        end if;
    end if;
end
$function$;
