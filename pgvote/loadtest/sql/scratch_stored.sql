-- The bare-insert reference's check (pgvote/loadtest/scenarios.py stored_in_scratch): the ballots the scratch
-- schema holds for %(poll)s, and how many of the acknowledged fingerprints %(fps)s have one (their voter key is
-- the plain sha256 of sql/scratch.sql's cast_vote).
select (select count(*) from pgvote_loadtest.ballots where poll_id = %(poll)s),
       (select count(*) from pgvote_loadtest.ballots b join unnest(%(fps)s::text[]) f
            on b.voter_key = sha256(convert_to('fp:' || f, 'UTF8'))
        where b.poll_id = %(poll)s)
