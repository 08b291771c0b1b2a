-- partman.create_partitions(table_name, modulus, dry_run): the initial hash partitions of a table,
-- `<table>_m<modulus>_r<r>` for every remainder, with the same DDL as the initial migration
-- (tests/test_static.py holds them equal). Idempotent: partitions of the set that exist are
-- kept, the missing ones are created in the caller's transaction (all or none). A table whose
-- partitions follow another layout is refused: `split` grows a layout, this only builds the first.
--
-- Inputs: 'schema.table' (or 'table' in schema voting); modulus a power of two, 1..1024 (one
-- partition at a time can then be doubled); dry_run: change nothing. Output: (partition,
-- statement) per partition created (or, dry run, to create). Errors: PM001 for a table that is
-- not hash-partitioned, a bad modulus, another layout, or a detached table in the way (CREATE
-- TABLE IF NOT EXISTS would silently skip it). Locks: ACCESS EXCLUSIVE on the parent while the
-- partitions are created.
create or replace function partman.create_partitions(table_name text, modulus integer, dry_run boolean default false)
returns table (partition text, statement text)
language plpgsql
set search_path = pg_catalog, pg_temp
as $function$
declare
    parent regclass := to_regclass(case when strpos(table_name, '.') > 0 then table_name else 'voting.' || table_name end);
    strategy "char";
    schema_name text;
    base text;
    other record;
begin
    if modulus < 1 or modulus > 1024 or modulus & (modulus - 1) <> 0 then
        perform partman.refuse(format('the partition count must be a power of two between 1 and 1024; got %s', modulus));
    end if;
    select pt.partstrat, n.nspname, c.relname into strategy, schema_name, base
    from pg_partitioned_table as pt join pg_class as c on c.oid = pt.partrelid
    join pg_namespace as n on n.oid = c.relnamespace where pt.partrelid = parent and not c.relispartition;
    if not found then
        perform partman.refuse(format('%s is not a partitioned table (run the migrations first: `pgvote migrate`)',
                                      table_name));
    elsif strategy <> 'h' then
        perform partman.refuse(format('%s.%s is not hash-partitioned: create makes hash partitions only',
                                      schema_name, base));
    end if;
    select * into other from partman.partitions(parent) as p
    where p.kind <> 'hash' or p.modulus <> create_partitions.modulus limit 1;
    if found then
        perform partman.refuse(format('%s.%s already has partitions of another layout (%s: %s); create only builds '
                                      'the initial set, use `split` to grow it', schema_name, base, other.name, other.bound));
    end if;
    select * into other from partman.loose_tables(parent) as l
    where l.modulus = create_partitions.modulus and l.role <> 'retired' limit 1;
    if found then
        perform partman.refuse(format('%s exists but is not attached: attach or drop it first', other.name));
    end if;
    for partition, statement in
        select format('%s.%s_m%s_r%s', schema_name, base, modulus, r),
               format('create table if not exists %I.%I partition of %I.%I for values with (modulus %s, remainder %s)',
                      schema_name, format('%s_m%s_r%s', base, modulus, r), schema_name, base, modulus, r)
        from generate_series(0, modulus - 1) as r
        where not exists (select from partman.partitions(parent) as p where p.remainder = r) loop
        perform partman.run(statement, dry_run);
        return next;
    end loop;
end
$function$;
