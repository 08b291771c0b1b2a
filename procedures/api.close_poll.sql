-- api.close_poll: close a poll; only its creator may.  POST /rpc/close_poll
--
-- Output    {"poll_id", "closed": true, "closed_at"}; closing a closed poll returns the
--           same answer (idempotent). An expired poll records closed_at = closes_at.
-- Errors    poll_not_found 404, login_required 401, not_poll_creator 403.
-- Locks     the poll's close fence EXCLUSIVE (see internal.poll_fence_lock_key): waits for the
--           votes in flight on this poll and holds new ones until this commits, so no
--           ballot commits after the close. Taken only after the creator check, so no
--           other caller can stall the poll's voters.
create or replace function api.close_poll(poll_id uuid) returns jsonb
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $function$
declare
    poll   voting.polls;
    caller bytea;
begin
    select p.* into poll from voting.polls as p where p.poll_id = close_poll.poll_id;
    if not found then
        perform internal.raise_api_error('poll_not_found', 'There is no poll with this poll_id.');
    end if;
    caller := internal.voter_key('sub:' || internal.jwt_sub());
    if poll.creator_key <> caller then
        perform internal.raise_api_error('not_poll_creator', 'Only the creator of this poll can close it.');
    end if;

    if poll.closed_at is null then
        perform pg_advisory_xact_lock(internal.advisory_lock_namespace('poll_fence'),
                                      internal.poll_fence_lock_key(poll.poll_id));
        update voting.polls as p
        set closed_at = least(clock_timestamp(), p.closes_at)
        where p.poll_id = poll.poll_id and p.closed_at is null
        returning p.* into poll;
        if not found then  -- a concurrent close committed first; report its closed_at
            select p.* into poll from voting.polls as p where p.poll_id = close_poll.poll_id;
            if not found then  -- gone meanwhile: moved to another shard (pgvote/grow.py)
                perform internal.raise_api_error('poll_not_found', 'There is no poll with this poll_id.');
            end if;
        end if;
    end if;

    return jsonb_build_object('poll_id', poll.poll_id, 'closed', true, 'closed_at', poll.closed_at);
end
$function$;
