-- internal.poll_fence_key(poll_id): the advisory-lock key of a poll's close fence.
--
-- Every cast_vote holds this key in SHARE mode for its transaction; close_poll takes it
-- EXCLUSIVE, which waits for the votes in flight and holds new ones until the close
-- commits. So no ballot commits after its poll was closed. The key is the first 64 bits
-- of the uuid; a collision between two polls only makes one wait for the other's close.
create or replace function internal.poll_fence_key(poll_id uuid) returns bigint
language sql
immutable
parallel safe
as $function$
    select ('x' || left(replace(poll_id::text, '-', ''), 16))::bit(64)::bigint
$function$;
