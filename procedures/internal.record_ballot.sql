-- internal.record_ballot(poll, voter_key, ballot_key, ballot, positions): store a VALID
-- ballot and count it; returns recorded | changed | unchanged | already_voted.
--
-- The write half shared by cast_vote and cast_votes; callers have validated the poll
-- (open), the voter and the ballot (internal.normalize_ballot) and hold the poll's fence
-- in SHARE mode. ballot_key is the nil uuid on single-ballot polls (one ballot per voter
-- through the primary key), the retry key or a random uuid on multiple-vote polls.
-- already_voted is returned, not raised, so a batch can report it per ballot; nothing is
-- written in that case, nor for unchanged. A ballot already stored under the key is
-- settled by internal.settle_existing_ballot.
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

    select s.outcome, s.stored into outcome, stored
    from internal.settle_existing_ballot(poll, record_ballot.voter_key, ballot_key, ballot, positions) as s;
end
$function$;
