-- internal.poll_fence_lock_key(poll_id): the key of a poll's close fence, an advisory lock in
-- the namespace internal.advisory_lock_namespace('poll_fence').
--
-- Every vote holds the fence in SHARE mode for its transaction; close_poll takes it
-- EXCLUSIVE, which waits for the votes in flight and holds new ones until the close
-- commits. So no ballot commits after its poll was closed. The key is the first 32 bits
-- of the uuid; a collision between two polls only makes one wait for the other's close.
-- Whatever the poll id, the namespace stays the fence's: no poll id reaches another
-- feature's lock.
create or replace function internal.poll_fence_lock_key(poll_id uuid) returns integer
language sql
immutable
parallel safe
as $function$
    select ('x' || left(poll_id::text, 8))::bit(32)::integer
$function$;
