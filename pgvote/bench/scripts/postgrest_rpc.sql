-- POST /rpc/cast_vote (or, with -D bulk=1, POST /rpc/cast_votes) exactly as PostgREST 12 sends it (docs/postgrest.md)
-- through PgBouncer, run with -M extended (db-prepared-statements = false: unnamed statements, no
-- PREPARE): BEGIN, the request's transaction-local settings (role and JWT claims set with
-- set_config(..., true)), the db-pre-request hook, the call, COMMIT. `pgvote bench` (R4+, the
-- client sweep, the hook's cost) and `pgvote loadtest --sql` (the burst, its bare-insert reference,
-- the bulk path) run it; pgvote/bench/pgbench.py (postgrest_variables) sets every -D variable:
--   role, claims, path  the JWT's role (anon; ingest for cast_votes), its claims, the request path
--   hook                1: call hooks.pre_request, as api/postgrest.conf's db-pre-request does
--   caller              the x-real-ip nginx would set: client (10.0.x.y per pgbench client, which the
--                       hook keeps one bucket for), voter (10.x.y.z per voter number: each voter is a
--                       client of its own, as in a spike), none (no header: the one shared bucket of
--                       address-less requests)
--   slot                this transaction's place: client_id * per_client + n, where n counts the
--                       client's own transactions (-D n=0; pgbench keeps a client's variables from
--                       one transaction to the next). No two transactions of a run share a slot;
--                       with -t per_client they are 0 .. clients * per_client - 1, and a client's
--                       k-th committed transaction in pgbench's log (-l) had slot client_id * per_client + k - 1
--   number              what the slot casts: the slot itself; with recast=1 (a pass that re-casts what
--                       an earlier one left unanswered) the number staged for it in pgvote_loadtest.recasts
--   cast_vote           voter number: fingerprint prefix || number, the options patterns[number % npatterns]
--                       on poll (pgvote/loadtest/scenarios.py BallotSpec gives each voter the same ones)
--   cast_votes          batch number: its body, staged by the run in pgvote_loadtest.batches
-- Staged values are read first, as the login role and outside the request: the client's own copy.
\set slot :client_id * :per_client + :n
\set n :n + 1
\set number :slot
\if :recast
select number from pgvote_loadtest.recasts where slot = :slot \gset
\endif
\set pattern :number % :npatterns
\if :bulk
select body from pgvote_loadtest.batches where n = :number \gset
\endif
begin isolation level read committed read write;
select set_config('search_path', '"api", "public"', true), set_config('role', :role, true),
       set_config('request.jwt.claims', :claims, true), set_config('request.method', 'POST', true),
       set_config('request.path', :path, true),
       set_config('request.headers', json_strip_nulls(json_build_object(
           'content-type', 'application/json',
           'x-real-ip', case :caller
                            when 'client' then '10.0.' || :client_id / 256 || '.' || :client_id % 256
                            when 'voter' then '10.' || :number::bigint / 65536 % 256 || '.'
                                              || :number::bigint / 256 % 256 || '.' || :number::bigint % 256
                        end))::text,
           true),
       set_config('request.cookies', '{}', true);
\if :hook
select "hooks"."pre_request"();
\endif
\if :bulk
with pgrst_source as (
    select pgrst_call.pgrst_scalar
    from (select :body::json as json_data) as pgrst_payload,
         lateral (select "ballots" from json_to_record(pgrst_payload.json_data) as _("ballots" jsonb) limit 1)
             as pgrst_body,
         lateral (select "api"."cast_votes"("ballots" := pgrst_body."ballots") as pgrst_scalar) as pgrst_call)
select null::bigint as total_result_set, 1 as page_total,
       coalesce(json_agg(_postgrest_t.pgrst_scalar) -> 0, 'null') as body,
       nullif(current_setting('response.headers', true), '') as response_headers,
       nullif(current_setting('response.status', true), '') as response_status,
       '' as response_inserted
from (select "cast_votes".* from "pgrst_source" as "cast_votes") as _postgrest_t;
\else
with pgrst_source as (
    select pgrst_call.pgrst_scalar
    from (select json_build_object('poll_id', :poll::text, 'option_ids', :patterns::json -> :pattern::integer,
                                   'voter_fingerprint', :prefix || :number) as json_data) as pgrst_payload,
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
\endif
commit;
