-- One new anonymous ballot per transaction through api.cast_vote, on a poll drawn from
-- bench.polls (npolls = 1: the hot poll; 10000: spread).
\set n random(1, :npolls)
select api.cast_vote(b.poll_id, array[b.option_id], 'bench-' || gen_random_uuid())
from bench.polls as b where b.n = :n;
