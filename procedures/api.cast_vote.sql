-- api.cast_vote: record one ballot, atomically, in one round trip.  POST /rpc/cast_vote
--
-- Inputs    poll_id; option_ids, a set (order does not matter); voter_fingerprint, the
--           identity of an anonymous caller (ignored for JWT callers, whose voter is the
--           JWT sub); ballot_id, a retry key on multiple-vote polls (ignored elsewhere).
-- Output    {"poll_id", "option_ids" (in the poll's option order), "status"} where status
--           is recorded (new ballot), changed (revote replaced the voter's ballot) or
--           unchanged (identical re-cast or repeated ballot_id: nothing written).
-- Errors    first match wins: rate_limited 429 per caller (decided by the pre-request
--           hook, hooks.pre_request, before this function runs: a caller whose bucket is
--           empty gets it whatever the body), poll_not_found 404, poll_closed 410 (closed,
--           or closes_at passed by the clock once the fence is held), login_required 401,
--           invalid_fingerprint 400, invalid_ballot 400, rate_limited 429 (anonymous
--           ballots on multiple-vote polls, per fingerprint), already_voted 409. A
--           rejected call writes nothing (the error aborts the transaction).
--           option_ids arrives as PostgREST's json_to_record made it: a JSON array, or a
--           string in PostgreSQL's array syntax ("{id,id}"), which it coerces into the same
--           array; a literal with another lower bound or more dimensions is invalid_ballot.
-- Locks     the poll's close fence in SHARE mode (see internal.poll_fence_lock_key), taken
--           BEFORE the poll is read so that a vote queued behind a close sees it closed;
--           then, in internal.record_ballot, only the voter's own ballot row and this
--           backend's own tally slot. No row shared between voters is written, so a
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
    secret     internal.voter_key_secret;
    voter      bytea;
    ballot     uuid[];
    positions  smallint[];
    ballot_key uuid;
    outcome    text;
begin
    if cast_vote.poll_id is not null then
        perform pg_advisory_xact_lock_shared(internal.advisory_lock_namespace('poll_fence'),
                                             internal.poll_fence_lock_key(cast_vote.poll_id));
    end if;
    select p.* into poll from voting.polls as p where p.poll_id = cast_vote.poll_id;
    if not found then
        perform internal.raise_api_error('poll_not_found', 'There is no poll with this poll_id.');
    end if;
    -- The clock, not now(): the transaction may have started long ago (queued in the
    -- pre-request hook or behind the fence), and no ballot may commit after closes_at.
    if poll.closed_at is not null or poll.closes_at <= clock_timestamp() then
        perform internal.raise_api_error('poll_closed', 'This poll is closed: it accepts no more votes.');
    end if;
    select s.* into secret from internal.voter_key_secret as s;
    voter := internal.hmac_sha256(secret.inner_pad, secret.outer_pad,
                                  internal.voter_identity(poll.allow_anonymous, cast_vote.voter_fingerprint));
    select n.ballot, n.positions into ballot, positions
    from internal.normalize_ballot(poll.poll_id, poll.max_choices, cast_vote.option_ids) as n;
    -- Anonymous ballots on multiple-vote polls are rate-limited per fingerprint here (the
    -- pre-request hook cannot see the body); elsewhere a repeat is `unchanged` anyway.
    if poll.allow_multiple_votes then
        perform internal.take_fingerprint_token(poll.poll_id, true, voter);
    end if;
    -- Single-ballot polls key every voter's ballot as the nil uuid: one ballot per voter.
    ballot_key := case when poll.allow_multiple_votes
                       then coalesce(cast_vote.ballot_id, gen_random_uuid())
                       else '00000000-0000-0000-0000-000000000000' end;

    select r.outcome, r.stored into outcome, ballot
    from internal.record_ballot(poll, voter, ballot_key, ballot, positions) as r;
    if outcome = 'already_voted' then
        perform internal.raise_api_error('already_voted',
            'You have already voted in this poll and it does not allow changing a vote.');
    end if;
    return jsonb_build_object('poll_id', poll.poll_id, 'option_ids', to_jsonb(ballot), 'status', outcome);
end
$function$;
