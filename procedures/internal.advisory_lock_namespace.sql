-- internal.advisory_lock_namespace(feature): the namespace (first key) of the advisory locks
-- of one feature. The one registry of pgvote's advisory locks: every one of them uses the
-- two-key form pg_advisory_*lock(namespace, key), so a key chosen by one feature (a poll id
-- picks its fence's key) can never equal a lock of another feature.
--
--   1 poll_fence          a poll's close fence; key internal.poll_fence_lock_key(poll_id).
--                         SHARE: every vote; EXCLUSIVE: close_poll, rebuild_tallies.
--   2 tally_maintenance   rebuild_tallies and compact_tally_slots, one at a time; key 0.
--   3 partition_split     the partition manager's session lock, one split at a time per
--                         database; key 0 (partman.take_split_lock).
--   4 split_mirror        a split's copy batches against its mirror trigger; key the oid of
--                         the partition being split (partman.mirror_ddl, partman.split_slice).
--
-- An unregistered feature gives NULL, and a lock on NULL locks nothing: the same test
-- requires every feature named in procedures/ to be registered here.
create or replace function internal.advisory_lock_namespace(feature text) returns integer
language sql
immutable
parallel safe
as $function$
    select case feature
               when 'poll_fence' then 1
               when 'tally_maintenance' then 2
               when 'partition_split' then 3
               when 'split_mirror' then 4
           end
$function$;
