-- partman.partitioned_tables(schema_name): the top-level partitioned tables of a schema, by name,
-- the tables every report and `split --all` / `--resume` walk.
--
-- Inputs: the schema. Output: (rel, name 'schema.table', strategy hash|list|range, key = the key
-- columns in order, empty when the key has an expression). Errors: none. Locks: none.
create or replace function partman.partitioned_tables(schema_name text)
returns table (rel regclass, name text, strategy text, key text[])
language sql
stable
set search_path = pg_catalog, pg_temp
as $function$
    select c.oid::regclass, n.nspname || '.' || c.relname,
           case pt.partstrat when 'h' then 'hash' when 'l' then 'list' else 'range' end,
           case when 0 = any (pt.partattrs::int2[]) then '{}'::text[] else array(
               select a.attname::text from unnest(pt.partattrs::int2[]) with ordinality as k(attnum, o)
               join pg_attribute as a on a.attrelid = c.oid and a.attnum = k.attnum order by k.o) end
    from pg_partitioned_table as pt
    join pg_class as c on c.oid = pt.partrelid
    join pg_namespace as n on n.oid = c.relnamespace
    where n.nspname = schema_name and not c.relispartition
    order by c.relname
$function$;
