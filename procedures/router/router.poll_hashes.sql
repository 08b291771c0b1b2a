-- router.poll_hashes(poll_ids): the hash PL/Proxy places each poll by (partition = hash & (N - 1)).
--
-- Output    one row per id: hashtext of the uuid's canonical text (a NULL id hashes as the empty text;
--           its shard answers poll_not_found, as a single node does). While a growth from N to 2N
--           shards runs (router.growth, pgvote/grow.py), the cluster already has 2N partitions, and a
--           poll not yet moved (not in router.moved) gets its hash with the bits of the old partition
--           only, so it stays on its old shard until its move commits.
-- Why       the id alone decides the shard: no table says where a poll lives outside a growth, and
--           doubling moves a poll of partition p only to p or p + N (docs/scaling.md). A set-returning
--           SQL function of one SELECT: inlined into the router's api.cast_votes (one join for a batch)
--           and into router.poll_shard's query. PostgREST hands every uuid spelling over as a uuid, so
--           the text is always the canonical one.
create or replace function router.poll_hashes(poll_ids uuid[])
returns table (poll_id uuid, hash integer)
language sql
stable
as $function$
    select i.poll_id,
           case when g.active and m.poll_id is null
                then hashtext(coalesce(i.poll_id::text, '')) & (g.partitions - 1)
                else hashtext(coalesce(i.poll_id::text, '')) end
    from unnest(poll_ids) as i(poll_id)
    cross join router.growth as g
    left join router.moved as m on m.poll_id = i.poll_id
$function$;
