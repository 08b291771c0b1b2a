-- The scratch schema of a SQL-level run (pgvote/loadtest/scenarios.py): created for one `pgvote loadtest --sql`
-- scenario or one `pgvote bench` database, dropped afterwards.
--
-- The bare-insert reference: the same pgbench script, clients, PgBouncer and PostgREST envelope as the
-- single-vote burst (pgvote/bench/scripts/postgrest_rpc.sql, called as anon with the same transaction-local
-- settings), but the function it calls only inserts the ballot row and the pre-request hook is left out.
-- So the drain-rate ratio cast_vote / bare insert isolates what a vote costs on top of a bare insert (the
-- rate-limit hook and its bucket row, poll lookup and fence lock, HMAC voter key, ballot validation, tally
-- slot) from everything the two share: pgbench, PgBouncer, the envelope's other round trips, the durable commit.
-- Like with like: cast_vote's signature, JSON body and answer; SECURITY DEFINER, executable by anon only;
-- a row of voting.ballots's shape with its primary key and as many hash partitions; ON CONFLICT DO NOTHING
-- (an identical re-cast is idempotent here too); one durable commit per vote. Its voter key is a plain
-- sha256 (no secret lookup).
drop schema if exists pgvote_loadtest cascade;
create schema pgvote_loadtest;
create table pgvote_loadtest.ballots (like voting.ballots including defaults including constraints including indexes)
    partition by hash (poll_id);
do $partitions$
declare
    n integer := greatest(1, (select count(*) from pg_inherits where inhparent = 'voting.ballots'::regclass));
begin
    for i in 0 .. n - 1 loop
        execute format('create table pgvote_loadtest.ballots_%s partition of pgvote_loadtest.ballots '
                       'for values with (modulus %s, remainder %s)', i, n, i);
    end loop;
end
$partitions$;
-- read by the login role (postgrest_rpc.sql): the bulk path's request bodies, one per batch, and what
-- each slot of a re-cast pass casts
create table pgvote_loadtest.batches (n integer primary key, body text not null);
create table pgvote_loadtest.recasts (slot integer primary key, number integer not null);
create function pgvote_loadtest.cast_vote(
    poll_id uuid, option_ids uuid[], voter_fingerprint text default null, ballot_id uuid default null
) returns jsonb
language sql volatile security definer set search_path = pg_catalog, pg_temp
as $$
    with ins as (
        insert into pgvote_loadtest.ballots (poll_id, voter_key, ballot_id, option_ids)
        values ($1, sha256(convert_to('fp:' || $3, 'UTF8')), '00000000-0000-0000-0000-000000000000', $2)
        on conflict do nothing
        returning 1
    )
    select jsonb_build_object('poll_id', $1, 'option_ids', to_jsonb($2),
                              'status', case when exists (select from ins) then 'recorded' else 'unchanged' end)
$$;
revoke all on function pgvote_loadtest.cast_vote(uuid, uuid[], text, uuid) from public;
grant usage on schema pgvote_loadtest to anon;
grant execute on function pgvote_loadtest.cast_vote(uuid, uuid[], text, uuid) to anon;
