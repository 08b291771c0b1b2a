-- router.ballot_poll(ballot): the poll id of one cast_votes ballot as api.cast_votes reads it
-- (internal.parse_uuid); NULL for a ballot without a readable poll_id, which any shard rejects as
-- invalid_ballot exactly as a single node would.
-- No SET clause (every name is qualified): so it is inlined into the router's api.cast_votes.
create or replace function router.ballot_poll(ballot jsonb) returns uuid
language sql
immutable
parallel safe
as $function$
    select internal.parse_uuid(case when jsonb_typeof(ballot) = 'object' then ballot ->> 'poll_id' end)
$function$;
