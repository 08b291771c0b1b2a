-- router.poll_shard(poll_id): the hash PL/Proxy places a poll by (its partition is hash & (N - 1)).
--
-- Output    hashtext of the uuid's canonical text; a NULL id hashes as the empty text (its shard
--           answers poll_not_found, as a single node does).
-- Why       the id alone decides the shard, so the router needs no table of where polls live, and
--           going from N to 2N shards moves a poll of partition p only to p or p + N
--           (docs/scaling.md). PostgREST hands every uuid spelling over as a uuid, so the text is
--           always the canonical one. PL/pgSQL, not SQL: PL/Proxy calls it as a query of its own
--           on every call (RUN ON), where a SQL function would be planned again each time; no
--           SET clause, whose save and restore would cost more than the hash.
create or replace function router.poll_shard(poll_id uuid) returns integer
language plpgsql
immutable
parallel safe
as $function$
begin
    return hashtext(coalesce(poll_id::text, ''));
end
$function$;
