-- internal.settle_existing_ballot(poll, voter_key, ballot_key, ballot, positions): the
-- outcome of a VALID ballot whose key (poll, voter, ballot key) already holds a stored
-- ballot: unchanged | already_voted | changed (a revote: the stored ballot is replaced and
-- the tally moved in this backend's slot); stored is the ballot stored afterwards.
--
-- The second half of internal.record_ballot, and what api.cast_vote calls when its own
-- insert met a conflict. Callers hold the poll's fence in SHARE mode, as for record_ballot.
-- Writes nothing for unchanged and already_voted.
-- Locks: the voter's own ballot row, for a revote only.
create or replace function internal.settle_existing_ballot(
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
    -- The conflicting ballot is committed (ON CONFLICT waited for it) or is this
    -- transaction's own, and ballots are never deleted, so this fresh snapshot sees it.
    -- No lock yet: an identical re-cast must write nothing, not even a row lock.
    select b.option_ids into strict stored
    from voting.ballots as b
    where b.poll_id = poll.poll_id and b.voter_key = settle_existing_ballot.voter_key and b.ballot_id = ballot_key;

    if stored = ballot or poll.allow_multiple_votes then
        outcome := 'unchanged';
    elsif not poll.allow_revote then
        outcome := 'already_voted';
    else
        -- Revote: lock the voter's own row, then re-read it, since a concurrent revote
        -- of the same voter may have committed since the read above.
        select b.option_ids into strict stored
        from voting.ballots as b
        where b.poll_id = poll.poll_id and b.voter_key = settle_existing_ballot.voter_key and b.ballot_id = ballot_key
        for update;
        if stored = ballot then
            outcome := 'unchanged';
        else
            update voting.ballots as b
            set option_ids = ballot, changed_at = now()
            where b.poll_id = poll.poll_id and b.voter_key = settle_existing_ballot.voter_key and b.ballot_id = ballot_key;
            perform internal.add_to_tally(poll.poll_id, 0, internal.ballot_delta(poll.option_count, positions,
                array(select o.position from voting.poll_options as o
                      where o.poll_id = poll.poll_id and o.option_id = any (stored))));
            outcome := 'changed';
            stored := ballot;
        end if;
    end if;
end
$function$;
