-- R4+, the client sweep and the rate-limit scenario: POST /rpc/cast_vote exactly as PostgREST
-- 12 sends it (docs/postgrest.md) as the anonymous role, through PgBouncer, run with
-- -M extended (db-prepared-statements = false: unnamed statements, no PREPARE). The x-real-ip
-- header our nginx sets gives each pgbench client its own address; with -D hook=1 the
-- db-pre-request hook runs too, so every call takes a token from its client's bucket.
begin isolation level read committed read write;
select set_config('search_path', '"api", "public"', true), set_config('role', 'anon', true),
       set_config('request.jwt.claims', '{"role":"anon"}', true), set_config('request.method', 'POST', true),
       set_config('request.path', '/rpc/cast_vote', true),
       set_config('request.headers', json_build_object('content-type', 'application/json',
                                                       'x-real-ip', '10.0.' || :client_id / 256 || '.' || :client_id % 256)::text, true),
       set_config('request.cookies', '{}', true);
\if :hook
select "hooks"."pre_request"();
\endif
with pgrst_source as (
    select pgrst_call.pgrst_scalar
    from (select json_build_object('poll_id', :poll::text, 'option_ids', json_build_array(:opt::text),
                                   'voter_fingerprint', 'bench-' || gen_random_uuid()) as json_data) as pgrst_payload,
         lateral (select "poll_id", "option_ids", "voter_fingerprint"
                  from json_to_record(pgrst_payload.json_data)
                       as _("poll_id" uuid, "option_ids" uuid[], "voter_fingerprint" text) limit 1) as pgrst_body,
         lateral (select "api"."cast_vote"("poll_id" := pgrst_body."poll_id", "option_ids" := pgrst_body."option_ids",
                                           "voter_fingerprint" := pgrst_body."voter_fingerprint") as pgrst_scalar) as pgrst_call)
select null::bigint as total_result_set, 1 as page_total,
       coalesce(json_agg(_postgrest_t.pgrst_scalar) -> 0, 'null') as body,
       nullif(current_setting('response.headers', true), '') as response_headers,
       nullif(current_setting('response.status', true), '') as response_status,
       '' as response_inserted
from (select "cast_vote".* from "pgrst_source" as "cast_vote") as _postgrest_t;
commit;
