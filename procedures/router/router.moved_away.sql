-- router.moved_away(poll_id, message): whether a call that failed with `message` did so because a
-- growth moved its poll to the grown cluster while the call waited on the poll's old shard.
--
-- Output    true when the shard answered poll_not_found and the poll is now in router.moved: the
--           call queued behind the move's fence found the poll deleted there, and nothing of it was
--           written; the router's api functions then call once more, where the poll is now.
create or replace function router.moved_away(poll_id uuid, message text) returns boolean
language plpgsql
stable
as $function$
begin
    return message like '%"code": "poll_not_found"%'
           and exists (select from router.moved as m where m.poll_id = moved_away.poll_id);
end
$function$;
