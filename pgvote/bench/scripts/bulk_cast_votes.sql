-- The bulk path: one batch of :batch new anonymous ballots for one poll through api.cast_votes, as
-- the edge tier's ingest role sends it through PgBouncer (PostgREST's envelope: BEGIN, the role and
-- claims, the call, COMMIT). Each ballot has its own random fingerprint, so every one is new. The
-- batch is built in the same statement (jsonb_agg over generate_series): the server pays for
-- building the JSON that a client would send, so this errs against the bulk path, never for it.
begin isolation level read committed read write;
select set_config('role', 'ingest', true), set_config('request.jwt.claims', '{"role":"ingest"}', true),
       set_config('request.method', 'POST', true), set_config('request.path', '/rpc/cast_votes', true);
select (api.cast_votes(b.ballots) ->> 'recorded')::integer as recorded
from (select jsonb_agg(jsonb_build_object('poll_id', :poll::text, 'option_ids', jsonb_build_array(:opt::text),
                                          'voter_fingerprint', 'bulk-' || gen_random_uuid())) as ballots
      from generate_series(1, :batch)) as b;
commit;
