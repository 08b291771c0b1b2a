-- The ballots `python -m partitions.benchmark` loads into the hot polls before the split (INSERT … SELECT
-- as superuser): %(rows)s ballots spread over the %(n)s polls of %(ids)s, each one option of its poll
-- (%(opts)s: 3 per poll, in poll order), one fingerprint digest per ballot.
insert into voting.ballots (poll_id, voter_key, ballot_id, option_ids)
select (%(ids)s::uuid[])[1 + g %% %(n)s], sha256(('seed-' || g)::bytea), '00000000-0000-0000-0000-000000000000',
       array[(%(opts)s::uuid[])[(g %% %(n)s) * 3 + 1 + (g / %(n)s) %% 3]]
from generate_series(0, %(rows)s - 1) g
