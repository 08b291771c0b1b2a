-- api.cast_vote: record one ballot, atomically, in one round trip.  POST /rpc/cast_vote
--
-- Inputs    poll_id; option_ids, a set (order does not matter); voter_fingerprint, the
--           identity of an anonymous caller (ignored for JWT callers, whose voter is the
--           JWT sub); ballot_id, a retry key on multiple-vote polls (ignored elsewhere).
-- Output    {"poll_id", "option_ids" (in the poll's option order), "status"} where status
--           is recorded (new ballot), changed (revote replaced the voter's ballot) or
--           unchanged (identical re-cast or repeated ballot_id: nothing written).
-- Errors    first match wins: poll_not_found 404, poll_closed 410, login_required 401,
--           invalid_fingerprint 400, invalid_ballot 400, already_voted 409. A rejected
--           call writes nothing (the error aborts the transaction).
-- Locks     the poll's close fence in SHARE mode (see internal.poll_fence_key), taken
--           BEFORE the poll is read so that a vote queued behind a close sees it closed;
--           then only the voter's own ballot row and this backend's own tally slot
--           (internal.add_to_tally). No row shared between voters is written, so a
--           viral poll does not make voters queue.
-- Isolation READ COMMITTED (PostgREST's default). One ballot per voter rests on the
--           primary key (poll_id, voter_key, ballot_id) through INSERT ... ON CONFLICT,
--           not on a snapshot check, so it holds under any concurrency without
--           serialization failures.
create or replace function api.cast_vote(
    poll_id uuid,
    option_ids uuid[],
    voter_fingerprint text default null,
    ballot_id uuid default null
) returns jsonb
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $function$
declare
    poll       voting.polls;
    voter      bytea;
    ballot     uuid[];
    positions  smallint[];
    stored     uuid[];
    ballot_key uuid;
    outcome    text;
begin
    if cast_vote.poll_id is not null then
        perform pg_advisory_xact_lock_shared(internal.poll_fence_key(cast_vote.poll_id));
    end if;
    select p.* into poll from voting.polls as p where p.poll_id = cast_vote.poll_id;
    if not found then
        perform internal.raise_api_error('poll_not_found', 'There is no poll with this poll_id.');
    end if;
    if poll.closed_at is not null or poll.closes_at <= now() then
        perform internal.raise_api_error('poll_closed', 'This poll is closed: it accepts no more votes.');
    end if;

    voter  := internal.voter_key(internal.voter_identity(poll.allow_anonymous, cast_vote.voter_fingerprint));
    select n.ballot, n.positions into ballot, positions
    from internal.normalize_ballot(poll.poll_id, poll.max_choices, cast_vote.option_ids) as n;
    -- Single-ballot polls key every voter's ballot as the nil uuid: one ballot per voter.
    ballot_key := case when poll.allow_multiple_votes
                       then coalesce(cast_vote.ballot_id, gen_random_uuid())
                       else '00000000-0000-0000-0000-000000000000' end;

    insert into voting.ballots as b (poll_id, voter_key, ballot_id, option_ids)
    values (poll.poll_id, voter, ballot_key, ballot)
    on conflict on constraint ballots_pkey do nothing;

    if found then
        outcome := 'recorded';
        perform internal.add_to_tally(poll.poll_id, poll.option_count, positions, null, 1);
    else
        -- The conflicting ballot is committed (ON CONFLICT waited for it) and ballots are
        -- never deleted, so this statement's fresh snapshot sees it. No lock yet: an
        -- identical re-cast must write nothing, not even a row lock.
        select b.option_ids into strict stored
        from voting.ballots as b
        where b.poll_id = poll.poll_id and b.voter_key = voter and b.ballot_id = ballot_key;

        if stored = ballot or poll.allow_multiple_votes then
            outcome := 'unchanged';
            ballot  := stored;
        elsif not poll.allow_revote then
            perform internal.raise_api_error('already_voted',
                'You have already voted in this poll and it does not allow changing a vote.');
        else
            -- Revote: lock the voter's own row, then re-read it, since a concurrent revote
            -- of the same voter may have committed since the read above.
            select b.option_ids into strict stored
            from voting.ballots as b
            where b.poll_id = poll.poll_id and b.voter_key = voter and b.ballot_id = ballot_key
            for update;
            if stored = ballot then
                outcome := 'unchanged';
            else
                update voting.ballots as b
                set option_ids = ballot, changed_at = now()
                where b.poll_id = poll.poll_id and b.voter_key = voter and b.ballot_id = ballot_key;
                perform internal.add_to_tally(poll.poll_id, poll.option_count, positions,
                    array(select o.position from voting.poll_options as o
                          where o.poll_id = poll.poll_id and o.option_id = any (stored)), 0);
                outcome := 'changed';
            end if;
        end if;
    end if;

    return jsonb_build_object('poll_id', poll.poll_id, 'option_ids', to_jsonb(ballot), 'status', outcome);
end
$function$;
