-- The Citus variant of the sharded profile (docs/scaling.md), run once on the coordinator after
-- `pgvote migrate` built the full schema there (deploy/citus/compose.yaml). UNPROVEN here: no Citus
-- on these machines; tests/test_deploy_configs.py checks every name and signature below against
-- procedures/ and db/tables/.
--
-- The same split as PL/Proxy's: the coordinator keeps PostgREST's transaction (the pre-request hook,
-- the rate-limit buckets, the router's api functions of procedures/router/), and every call of a poll
-- runs on the worker that holds the poll, as the shard.* entry point of procedures/, delegated by its
-- poll_id. What PL/Proxy's router.* functions do (cross to the shard) is done here by plain calls that
-- Citus delegates.
create extension if not exists citus;

-- Data: every table of a poll distributed by poll_id and colocated, so a poll's rows are on one worker.
select create_distributed_table('voting.polls', 'poll_id');
select create_distributed_table('voting.poll_options', 'poll_id', colocate_with => 'voting.polls');
select create_distributed_table('voting.ballots', 'poll_id', colocate_with => 'voting.polls');
select create_distributed_table('voting.tally_slots', 'poll_id', colocate_with => 'voting.polls');
-- One voter-key secret and one set of limits on every node (a voter is one key everywhere).
select create_reference_table('internal.voter_key_secret');
select create_reference_table('rate_limit.limits');
-- rate_limit.buckets stays a local table of the coordinator: only its pre-request hook writes it.

-- The router's transport, as PL/Proxy's router.* functions are in procedures/router/: the same
-- names and arguments, so the router's api functions run unchanged (schema router and its tables:
-- db/router.sql, applied before this file). A growth (pgvote/grow.py) is PL/Proxy's: Citus moves
-- shards itself (citus_move_shard_placement), so router.moved stays empty here.

create or replace function router.cast_vote(request jsonb, poll_id uuid, option_ids uuid[],
                                            voter_fingerprint text, ballot_id uuid) returns jsonb
language sql volatile set search_path = pg_catalog, pg_temp
as $$ select shard.cast_vote(request, poll_id, option_ids, voter_fingerprint, ballot_id) $$;

create or replace function router.create_poll(request jsonb, poll_id uuid, question text, options text[],
                                              max_choices integer, allow_revote boolean,
                                              allow_multiple_votes boolean, allow_anonymous boolean,
                                              closes_at timestamptz) returns jsonb
language sql volatile set search_path = pg_catalog, pg_temp
as $$ select shard.create_poll(request, poll_id, question, options, max_choices, allow_revote,
                               allow_multiple_votes, allow_anonymous, closes_at) $$;

create or replace function router.close_poll(request jsonb, poll_id uuid) returns jsonb
language sql volatile set search_path = pg_catalog, pg_temp
as $$ select shard.close_poll(request, poll_id) $$;

create or replace function router.poll_results(poll_id uuid) returns jsonb
language sql stable set search_path = pg_catalog, pg_temp
as $$ select shard.poll_results(poll_id) $$;

-- A batch is not one poll's: it runs on the coordinator, whose statements Citus spreads over the
-- workers. Unproven and weaker than PL/Proxy's split: the close fence is an advisory lock, which
-- Citus does not distribute, so a batch and a close of the same poll are not fenced from each other.
create or replace function router.cast_votes(request jsonb, hashes integer[], ballots jsonb[], ordinals integer[])
returns table (ordinal integer, result jsonb)
language sql volatile set search_path = pg_catalog, pg_temp
as $$ select c.ordinal, c.result from shard.cast_votes(request, ballots, ordinals) as c $$;

revoke all on all functions in schema router from public;

-- The entry points run where the poll lives, inside PostgREST's transaction (force_delegation).
select create_distributed_function('shard.cast_vote(jsonb,uuid,uuid[],text,uuid)',
                                   distribution_arg_name => 'poll_id', colocate_with => 'voting.polls',
                                   force_delegation => true);
select create_distributed_function('shard.create_poll(jsonb,uuid,text,text[],integer,boolean,boolean,boolean,timestamptz)',
                                   distribution_arg_name => 'poll_id', colocate_with => 'voting.polls',
                                   force_delegation => true);
select create_distributed_function('shard.close_poll(jsonb,uuid)',
                                   distribution_arg_name => 'poll_id', colocate_with => 'voting.polls',
                                   force_delegation => true);
select create_distributed_function('shard.poll_results(uuid)',
                                   distribution_arg_name => 'poll_id', colocate_with => 'voting.polls',
                                   force_delegation => true);
