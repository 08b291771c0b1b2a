-- Revision 0001: schemas, tables and indexes. FROZEN once merged: a table change is a
-- new numbered file, never an edit of this one. Functions are not here: their only
-- source is procedures/, re-applied by every upgrade. The hash partitions of
-- voting.ballots are created by the migration through partitions/ (their count is a
-- parameter of the migration).

create schema api;
comment on schema api is
    'The HTTP surface: the only schema PostgREST exposes. Functions only, no tables.';

create schema voting;
comment on schema voting is
    'Private storage of polls, options and ballots. No API role has any privilege here.';

create schema internal;
comment on schema internal is
    'Private helpers of the api functions and installation secrets. Not exposed, not executable by API roles.';

-- Functions are executable by PUBLIC by default; nothing of ours should be.
alter default privileges revoke execute on functions from public;

-- Per-installation secret for voter keys: voter keys are HMAC-SHA256(secret, identity),
-- so a leaked ballots table does not reveal who voted, and fingerprints are never
-- stored in clear. The HMAC pads are stored precomputed so that a voter key costs two
-- sha256() calls (builtin, no extension needed). The secret is 244 bits from
-- gen_random_uuid(), which draws from the server's strong random source.
create table internal.voter_key_secret (
    singleton  boolean primary key default true check (singleton),
    inner_pad  bytea not null check (octet_length(inner_pad) = 64),
    outer_pad  bytea not null check (octet_length(outer_pad) = 64),
    created_at timestamptz not null default now()
);
comment on table internal.voter_key_secret is
    'HMAC-SHA256 key material for voter keys (key XOR ipad / key XOR opad). Losing it makes existing ballots unmatchable to their voters.';

with key as (
    select uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())
           || decode(repeat('00', 32), 'hex') as k
)
insert into internal.voter_key_secret (inner_pad, outer_pad)
select decode(string_agg(lpad(to_hex(get_byte(k, i) # 54), 2, '0'), '' order by i), 'hex'),
       decode(string_agg(lpad(to_hex(get_byte(k, i) # 92), 2, '0'), '' order by i), 'hex')
from key, generate_series(0, 63) as i
group by k;

create table voting.polls (
    poll_id              uuid primary key default gen_random_uuid(),
    creator_key          bytea not null,
    question             text not null check (char_length(question) between 1 and 500),
    option_count         smallint not null check (option_count between 2 and 100),
    max_choices          smallint not null check (max_choices between 1 and option_count),
    allow_revote         boolean not null,
    allow_multiple_votes boolean not null,
    allow_anonymous      boolean not null,
    closes_at            timestamptz,
    closed_at            timestamptz,
    created_at           timestamptz not null default now()
);
comment on table voting.polls is 'One row per poll; creator_key is the creator''s voter key, never a clear id.';
comment on column voting.polls.closed_at is 'Set by close_poll; NULL while open (closes_at may still end voting earlier).';

-- "Open polls" on an immutable predicate over a stored column (an index predicate on
-- now() is rejected: predicates must be immutable). Serves jobs that look for open
-- polls whose closes_at has passed.
create index polls_open_by_closes_at on voting.polls (closes_at) where closed_at is null;

create table voting.poll_options (
    poll_id   uuid not null references voting.polls (poll_id) on delete cascade,
    option_id uuid not null default gen_random_uuid(),
    position  smallint not null check (position between 1 and 100),
    label     text not null check (char_length(label) between 1 and 200),
    primary key (poll_id, option_id),
    unique (poll_id, position),
    unique (poll_id, label)
);
comment on table voting.poll_options is 'The options of a poll, in display order (position).';

-- Ballots are hash-partitioned on poll_id: every key includes poll_id, so a lookup for
-- one poll touches one partition. There is deliberately no foreign key to polls: its
-- check would take a KEY SHARE lock on the poll's row for every vote, turning a viral
-- poll into one hot row. cast_vote validates the poll instead.
--
-- ballot_id: the nil uuid for single-ballot polls (so the primary key allows one ballot
-- per voter), the client's retry key or a random uuid on multiple-vote polls.
-- option_ids: the ballot as a set, stored in the poll's option order.
create table voting.ballots (
    poll_id    uuid not null,
    voter_key  bytea not null,
    ballot_id  uuid not null,
    option_ids uuid[] not null,
    cast_at    timestamptz not null default now(),
    changed_at timestamptz,
    primary key (poll_id, voter_key, ballot_id)
) partition by hash (poll_id);
comment on table voting.ballots is
    'Append-mostly ballots (a revote rewrites only the voter''s own row). One per voter on single-ballot polls.';

-- Which source text of procedures/ each function was last created from (see
-- pgvote/procedures.py): an upgrade re-applies exactly the files whose text changed.
create table internal.procedure_sources (
    file       text primary key,
    sha256     text not null,
    applied_at timestamptz not null default now()
);
comment on table internal.procedure_sources is
    'Replaceable objects: the digest of each procedures/ file as last applied.';
