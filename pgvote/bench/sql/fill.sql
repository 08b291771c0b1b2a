-- Fill the benchmark database (pgvote/bench/scenarios.py): %(polls)s polls made by api.create_poll as a signed-in
-- creator, their rows in the baseline and candidate tables, and %(ballots)s ballots in the hot poll (n = 1).
select set_config('request.jwt.claims', '{"role": "authenticated", "sub": "bench"}', false);
insert into bench.polls (n, poll_id, option_id)
select n, (created ->> 'poll_id')::uuid, (created -> 'option_ids' ->> 0)::uuid
from generate_series(1, %(polls)s) as n,
     lateral (select api.create_poll('bench poll ' || n, array['a', 'b', 'c', 'd'])) as c(created);
insert into bench.guide_polls (n, poll_id, option_id) select n, poll_id, option_id from bench.polls;
insert into bench.guide_option_counts (option_id) select option_id from bench.polls;
insert into bench.shared_counters (n, position) select n, p from bench.polls, generate_series(1, 4) as p;
insert into voting.ballots (poll_id, voter_key, ballot_id, option_ids)
select b.poll_id, sha256(int8send(i) || int2send(o.position)), '00000000-0000-0000-0000-000000000000',
       array[o.option_id]
from bench.polls as b
join voting.poll_options as o on o.poll_id = b.poll_id
cross join generate_series(1, %(ballots)s / 4) as i
where b.n = 1;
select internal.rebuild_tallies(poll_id) from bench.polls where n = 1;
