-- internal.take_fingerprint_token(poll_id, allow_multiple_votes, voter_key): the per-voter
-- limit of anonymous ballots on a multiple-vote poll, called by api.cast_vote.
--
-- The pre-request hook cannot see the request body, so an anonymous caller rotating nothing
-- but its IP is bounded here instead: one bucket per (poll, voter_key), limit 'fingerprint'
-- of rate_limit.limits (default 10 per minute, burst 20). Only anonymous HTTP callers on
-- multiple-vote polls: on single-ballot polls a repeat is `unchanged` anyway; JWT callers are
-- limited per sub by hooks.pre_request; a call without request.method (the database path,
-- inside the trust boundary) is not limited.
-- Precedence (api/README.md): call it after the ballot is validated (invalid_ballot wins) and
-- before the ballot is written (rate_limited wins over already_voted).
-- Errors    rate_limited 429 with Retry-After (internal.take_rate_token).
-- Locks     this voter's bucket row on this poll, until the vote commits; the token goes back
--           if the vote fails.
-- No SET search_path (a per-call cost on the vote path): it runs inside the SECURITY DEFINER
-- functions that call it (api.cast_vote), whose search_path is pinned; every name is qualified.
create or replace function internal.take_fingerprint_token(
    poll_id uuid,
    allow_multiple_votes boolean,
    voter_key bytea
) returns void
language plpgsql
volatile
as $function$
declare
    request_role text := coalesce(
        nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role', 'anon');
begin
    if not coalesce(allow_multiple_votes, false)
       or request_role <> 'anon'
       or coalesce(current_setting('request.method', true), '') = '' then
        return;
    end if;
    perform internal.take_rate_token('fingerprint', uuid_send(take_fingerprint_token.poll_id) || take_fingerprint_token.voter_key);
end
$function$;
