-- router.retry_or_forward(attempt, poll_id, state, message, detail, hint): what the router's api
-- function does with an error of its PL/Proxy call. Returns true to call once more; else raises.
--
-- Output    true on the first attempt when the shard answered poll_not_found and the poll is now in
--           router.moved: a growth (pgvote/grow.py) moved it while the call queued behind the move's
--           fence on its old shard, where nothing of the call was written; the next attempt goes where
--           the poll now is. Otherwise the error is raised as the client must see it
--           (router.forward_error).
create or replace function router.retry_or_forward(attempt integer, poll_id uuid, state text, message text,
                                                   detail text, hint text) returns boolean
language plpgsql
stable
as $function$
begin
    if attempt = 1 and message like '%"code": "poll_not_found"%'
       and exists (select from router.moved as m where m.poll_id = retry_or_forward.poll_id) then
        return true;
    end if;
    perform router.forward_error(state, message, detail, hint);
    return false;  -- not reached: forward_error always raises
end
$function$;
