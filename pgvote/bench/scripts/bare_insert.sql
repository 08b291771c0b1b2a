-- R1 denominator: a bare INSERT of one ballot row into voting.ballots (same partitioned
-- table, same 32-byte voter key, same poll lookup as cast_vote.sql), one per transaction.
\set n random(1, :npolls)
insert into voting.ballots (poll_id, voter_key, ballot_id, option_ids)
select b.poll_id, uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()),
       '00000000-0000-0000-0000-000000000000', array[b.option_id]
from bench.polls as b where b.n = :n;
