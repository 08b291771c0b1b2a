-- router.ballot_shard(ballot): the hash of one cast_votes ballot's poll (see router.poll_shard).
--
-- Output    router.poll_shard of the ballot's poll_id as api.cast_votes reads it
--           (internal.parse_uuid); a ballot without a readable poll_id hashes as NULL's, and its
--           shard rejects it as invalid_ballot exactly as a single node would.
-- No SET clause (every name is qualified): so it is inlined into the router's api.cast_votes.
create or replace function router.ballot_shard(ballot jsonb) returns integer
language sql
immutable
parallel safe
as $function$
    select router.poll_shard(internal.parse_uuid(case when jsonb_typeof(ballot) = 'object' then ballot ->> 'poll_id' end))
$function$;
