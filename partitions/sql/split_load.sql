-- The load of `python -m partitions.benchmark` (partitions/benchmark.py): anonymous api.cast_vote as
-- PostgREST 12 sends it (BEGIN, its transaction-local settings, the call, COMMIT), run by pgbench with
-- -M extended through PgBouncer. Even clients vote on the hot polls (the partition being split), odd ones
-- on the cold polls elsewhere, so pgbench's log (-l) tells the two apart by client number. -D variables:
--   hot_polls, cold_polls      uuid[] literals of each side's polls
--   hot_options, cold_options  uuid[] literals of their options, 3 per poll in poll order
--   hot_n, cold_n              how many polls each side has
--   voters                     fingerprints per poll: a small range makes revotes (and identical re-casts)
--   tag                        the run's fingerprint prefix
\set cold :client_id % 2
\set p random(1, (1 - :cold) * :hot_n + :cold * :cold_n)
\set o random(1, 3)
\set v random(1, :voters)
begin isolation level read committed read write;
select set_config('search_path', '"api", "public"', true), set_config('role', 'anon', true),
       set_config('request.jwt.claims', '{"role":"anon"}', true), set_config('request.method', 'POST', true);
select api.cast_vote(((case when :cold = 0 then :hot_polls else :cold_polls end)::uuid[])[:p],
                     array[((case when :cold = 0 then :hot_options else :cold_options end)::uuid[])[(:p - 1) * 3 + :o]],
                     :tag::text || '-' || :cold || '-' || :p || '-' || :v);
commit;
