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
--           then only the voter's own ballot row and this backend's own tally slot. No row
--           shared between voters is written, so a viral poll does not make voters queue.
-- Cost      a new one-option ballot is two SQL statements after the fence: one reads the
--           poll, the voter-key secret and the option together (and computes the voter key),
--           one inserts the ballot and counts it in this backend's tally slot.
--           Every check between them is a PL/pgSQL expression, evaluated without the
--           executor; no PL/pgSQL helper is called on this path (each call and each
--           statement costs more than the checks it holds: docs/benchmarks.md, the budget).
--           Multi-option ballots, a backend's first ballot on a poll, retries and revotes
--           take the shared helpers (internal.normalize_ballot, internal.add_to_tally,
--           internal.settle_existing_ballot).
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
    claims      jsonb := nullif(current_setting('request.jwt.claims', true), '')::jsonb;
    signed_in   boolean := coalesce(claims ->> 'role', 'anon') <> 'anon';
    sub         jsonb := claims -> 'sub';
    -- Who votes, before anything is read: the key is computed in the same statement as the
    -- poll is read. NULL when it cannot be used; the error is raised in its precedence below.
    identity    text := case
        when not signed_in then 'fp:' || cast_vote.voter_fingerprint
        when jsonb_typeof(sub) = 'string' and char_length(sub #>> '{}') between 1 and 256
            then 'sub:' || (sub #>> '{}')
    end;
    found_poll  uuid;
    closed_at   timestamptz;
    closes_at   timestamptz;
    anonymous   boolean;
    multiple    boolean;
    max_choices integer;
    n_options   integer;
    voter       bytea;
    ballot      uuid[];
    positions   smallint[];
    first_position smallint;
    ballot_key  uuid;
    inserted    boolean;
    counted     boolean;
    poll        voting.polls;
    settled     record;
begin
    if cast_vote.poll_id is not null then
        perform pg_advisory_xact_lock_shared(internal.advisory_lock_namespace('poll_fence'),
                                             internal.poll_fence_lock_key(cast_vote.poll_id));
    end if;
    -- One statement for everything the checks need (its snapshot is taken after the fence),
    -- as plain joins: every plan node costs its initialisation on each call, an aggregate more
    -- than the lookup it sorts. The first option's position is all a one-option ballot needs;
    -- other ballots are normalised below by internal.normalize_ballot.
    select p.poll_id, p.closed_at, p.closes_at, p.allow_anonymous, p.allow_multiple_votes, p.max_choices,
           p.option_count, internal.hmac_sha256(s.inner_pad, s.outer_pad, identity), o.position
    into found_poll, closed_at, closes_at, anonymous, multiple, max_choices, n_options, voter, first_position
    from voting.polls as p
    cross join internal.voter_key_secret as s
    left join voting.poll_options as o on o.poll_id = p.poll_id and o.option_id = cast_vote.option_ids[1]
    where p.poll_id = cast_vote.poll_id;

    if found_poll is null then
        perform internal.raise_api_error('poll_not_found', 'There is no poll with this poll_id.');
    end if;
    -- The clock, not now(): the transaction may have started long ago (queued in the
    -- pre-request hook or behind the fence), and no ballot may commit after closes_at.
    if closed_at is not null or closes_at <= clock_timestamp() then
        perform internal.raise_api_error('poll_closed', 'This poll is closed: it accepts no more votes.');
    end if;
    -- The identity's errors, in the contract's order: a JWT caller is its sub (a fingerprint in the
    -- body is ignored, so nobody votes as somebody else), an anonymous one its fingerprint.
    if signed_in and identity is null then
        perform internal.raise_api_error('login_required',
            'Sign in first: this call needs a JWT whose "sub" claim is a string of 1-256 characters.');
    end if;
    if not signed_in and not anonymous then
        perform internal.raise_api_error('login_required', 'This poll accepts votes from signed-in users only.');
    end if;
    if not signed_in and (cast_vote.voter_fingerprint is null
                          or char_length(cast_vote.voter_fingerprint) not between 1 and 256
                          or cast_vote.voter_fingerprint ~ '[[:cntrl:]]') then
        perform internal.raise_api_error('invalid_fingerprint',
            'Anonymous votes need a voter_fingerprint of 1-256 printable characters.');
    end if;
    -- The ballot: a valid one-option ballot is checked here; any other ballot goes through
    -- internal.normalize_ballot, which raises its errors (in its order) or returns the set.
    if cardinality(cast_vote.option_ids) = 1 and array_ndims(cast_vote.option_ids) = 1
       and array_lower(cast_vote.option_ids, 1) = 1 and first_position is not null then
        ballot := cast_vote.option_ids;
        positions := array[first_position];
    else
        select n.ballot, n.positions into ballot, positions
        from internal.normalize_ballot(found_poll, max_choices, cast_vote.option_ids) as n;
    end if;
    -- Anonymous ballots on multiple-vote polls are rate-limited per fingerprint here (the
    -- pre-request hook cannot see the body); elsewhere a repeat is `unchanged` anyway.
    if multiple then
        perform internal.take_fingerprint_token(found_poll, true, voter);
    end if;
    -- Single-ballot polls key every voter's ballot as the nil uuid: one ballot per voter.
    ballot_key := case when multiple then coalesce(cast_vote.ballot_id, gen_random_uuid())
                       else '00000000-0000-0000-0000-000000000000' end;

    -- The ballot and, for one option once this backend's slot of the poll exists, its count:
    -- one statement (see internal.record_ballot, which this path spells out for speed).
    with stored as (
        insert into voting.ballots as b (poll_id, voter_key, ballot_id, option_ids)
        values (found_poll, voter, ballot_key, ballot)
        on conflict on constraint ballots_pkey do nothing
        returning b.poll_id
    ), tallied as (
        update voting.tally_slots as t
        set ballots = t.ballots + 1, votes[positions[1]] = t.votes[positions[1]] + 1
        where t.poll_id = (select s.poll_id from stored as s) and t.slot = pg_backend_pid()
          and cardinality(positions) = 1
        returning t.slot
    )
    select exists (select from stored), exists (select from tallied) into inserted, counted;

    if not inserted then
        select p.* into poll from voting.polls as p where p.poll_id = found_poll;
        select * into settled from internal.settle_existing_ballot(poll, voter, ballot_key, ballot, positions);
        if settled.outcome = 'already_voted' then
            perform internal.raise_api_error('already_voted',
                'You have already voted in this poll and it does not allow changing a vote.');
        end if;
        return jsonb_build_object('poll_id', found_poll, 'option_ids', to_jsonb(settled.stored),
                                  'status', settled.outcome);
    end if;
    if not counted then
        perform internal.add_to_tally(found_poll, 1, internal.ballot_delta(n_options, positions));
    end if;
    return jsonb_build_object('poll_id', found_poll, 'option_ids', to_jsonb(ballot), 'status', 'recorded');
end
$function$;
