-- The benchmark database's own tables (pgvote/bench/scenarios.py), created after the project's migrations;
-- the bare-insert reference of the burst is the load test's scratch schema (pgvote/loadtest/sql/scratch.sql).
create schema bench;
-- n -> a poll and its first option; n = 1 is the hot poll (it also holds the 1M ballots).
create table bench.polls (n integer primary key, poll_id uuid not null, option_id uuid not null);
-- The original guide's design, for the R3 baseline: votes plus a counter row per option.
create table bench.guide_polls (n integer primary key, poll_id uuid not null, option_id uuid not null,
                                allow_multiple_votes boolean not null default false);
create table bench.guide_votes (id bigint generated always as identity primary key, poll_id uuid not null,
                                option_id uuid not null, voter bigint not null, created_at timestamptz default now());
create index on bench.guide_votes (poll_id, voter);
create table bench.guide_option_counts (option_id uuid primary key, votes bigint not null default 0);
-- Tally candidates: a shared counter row per option, and an append-only delta log.
create table bench.shared_counters (n integer, position integer, votes bigint not null default 0,
                                    primary key (n, position));
create table bench.tally_deltas (poll_id uuid not null, position smallint not null, delta smallint not null);
