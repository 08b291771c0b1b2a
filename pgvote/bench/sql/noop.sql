-- `pgvote bench --http` (pgvote/bench/http_bench.py): cast_vote's signature and a ballot-shaped answer, touching
-- nothing; created in api (PostgREST serves it without a configuration change) only while the bench runs.
create function api.bench_noop_cast_vote(poll_id uuid, option_ids uuid[], voter_fingerprint text default null,
                                         ballot_id uuid default null) returns jsonb
language sql volatile
as $$ select jsonb_build_object('poll_id', poll_id, 'option_ids', to_jsonb(option_ids), 'status', 'recorded') $$;
revoke all on function api.bench_noop_cast_vote(uuid, uuid[], text, uuid) from public;
grant execute on function api.bench_noop_cast_vote(uuid, uuid[], text, uuid) to anon, authenticated;
