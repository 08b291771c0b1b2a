-- shard.poll_results: api.poll_results on the shard that holds the poll, for the router.
--
-- Inputs    poll_id. Output api.poll_results' answer. Errors poll_not_found 404.
-- Why       an entry point of the schema only pgvote_router may use, like the others, so that the
--           router's role needs no privilege on the api schema of a shard. Its Cache-Control
--           header stays on the shard's connection: the router's api.poll_results sets its own.
create or replace function shard.poll_results(poll_id uuid) returns jsonb
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $function$
begin
    return api.poll_results(poll_id);
end
$function$;
