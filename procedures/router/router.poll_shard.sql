-- router.poll_shard(poll_id): the hash of one poll (router.poll_hashes), for the RUN ON clause of the
-- router's PL/Proxy functions. PL/pgSQL, not SQL: PL/Proxy calls it as a query of its own on every
-- call, where a SQL function would be planned again each time; no SET clause, whose save and restore
-- would cost more than the hash.
create or replace function router.poll_shard(poll_id uuid) returns integer
language plpgsql
stable
parallel safe
as $function$
begin
    return (select h.hash from router.poll_hashes(array[poll_shard.poll_id]) as h);
end
$function$;
