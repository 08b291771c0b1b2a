-- Who may do what, as pgTAP assertions: the request roles reach the api functions their endpoints
-- need and the pre-request hook, never a table; authenticator holds nothing itself (NOINHERIT);
-- ops reads the monitoring views only. Run by tests/test_security.py inside a transaction that is
-- rolled back (the pgtap extension is created in it, so nothing remains).
-- Tables are enumerated from the catalog, so a new table or partition is covered without an edit here;
-- the expected grants are written out: they are the invariant.
select no_plan();

-- Schemas: api and hooks (db-pre-request runs as the request's role) for the request roles; the
-- private schemas for nobody; monitoring for ops.
select schema_privs_are(s.name, r.name,
                        case when r.name = any (s.usage) then array['USAGE'] else array[]::text[] end,
                        format('%s has %s on schema %s', r.name,
                               case when r.name = any (s.usage) then 'exactly USAGE' else 'nothing' end, s.name))
from (values ('api', array['anon', 'authenticated', 'ingest']),
             ('hooks', array['anon', 'authenticated', 'ingest']),
             ('voting', array[]::text[]),
             ('internal', array[]::text[]),
             ('rate_limit', array[]::text[]),
             ('monitoring', array['ops']),
             ('partman', array[]::text[])) as s(name, usage),
     (values ('anon'), ('authenticated'), ('ingest'), ('authenticator'), ('ops')) as r(name);

-- Functions: each endpoint executable by exactly the roles of api/README.md's endpoint table.
select function_privs_are(f.schema, f.name, f.args, r.name,
                          case when r.name = any (f.callers) then array['EXECUTE'] else array[]::text[] end)
from (values ('api', 'cast_vote', array['uuid', 'uuid[]', 'text', 'uuid'], array['anon', 'authenticated']),
             ('api', 'poll_results', array['uuid'], array['anon', 'authenticated']),
             ('api', 'create_poll', array['text', 'text[]', 'integer', 'boolean', 'boolean', 'boolean',
                                          'timestamp with time zone'], array['authenticated']),
             ('api', 'close_poll', array['uuid'], array['authenticated']),
             ('api', 'cast_votes', array['jsonb'], array['ingest']),
             ('hooks', 'pre_request', array[]::text[], array['anon', 'authenticated', 'ingest'])) as f(schema, name, args, callers),
     (values ('anon'), ('authenticated'), ('ingest'), ('authenticator'), ('ops')) as r(name);

-- The partition manager's functions and procedures run DDL with the caller's rights: executable by
-- none of these roles (only the owner and superusers), whatever routines the schema holds.
select function_privs_are('partman', p.proname,
                          array(select format_type(a.t, null) from unnest(p.proargtypes::oid[]) with ordinality as a(t, o)
                                order by a.o), r.name, array[]::text[])
from pg_proc as p
join pg_namespace as n on n.oid = p.pronamespace,
     (values ('anon'), ('authenticated'), ('ingest'), ('authenticator'), ('ops'), ('pgvote_router')) as r(name)
where n.nspname = 'partman'
order by p.proname, r.name;

-- Tables, partitions and views of every project schema: no privilege for the request roles or
-- authenticator; ops only SELECT on the monitoring views.
select table_privs_are(n.nspname, c.relname, r.name,
                       case when r.name = 'ops' and n.nspname = 'monitoring' then array['SELECT'] else array[]::text[] end)
from pg_class as c
join pg_namespace as n on n.oid = c.relnamespace,
     (values ('anon'), ('authenticated'), ('ingest'), ('authenticator'), ('ops')) as r(name)
where n.nspname in ('api', 'hooks', 'voting', 'internal', 'rate_limit', 'monitoring')
  and c.relkind in ('r', 'p', 'v', 'm', 'f')
order by n.nspname, c.relname, r.name;

-- Sequences (none today; a new one is covered as it appears): no privilege for anyone above.
select sequence_privs_are(n.nspname, c.relname, r.name, array[]::text[])
from pg_class as c
join pg_namespace as n on n.oid = c.relnamespace,
     (values ('anon'), ('authenticated'), ('ingest'), ('authenticator'), ('ops')) as r(name)
where n.nspname in ('api', 'hooks', 'voting', 'internal', 'rate_limit', 'monitoring') and c.relkind = 'S';

select * from finish();
