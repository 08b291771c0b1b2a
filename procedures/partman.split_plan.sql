-- partman.split_plan(parent, modulus, remainder): everything the steps of the split of slice
-- (m, r) need, fixed before the first one runs: slice (m, r) becomes (2m, r) and (2m, r + m), in
-- the targets `<table>_m<2m>_r<r>` and `_r<r+m>`. The source is the attached partition of the
-- slice ('attached'), a pending one ('detach pending') or a detached table of its name
-- ('detached'), see partman.unfinished.
--
-- Inputs: the parent and the slice. Output: a JSON object; names are quoted and qualified
-- (source, low, high, parent, mirror_function, retired) or plain for messages (*_name); cols, pk,
-- pk_typed (the keyset parameters $1[i] cast back), pk_desc, non_key, key, owner (null when the
-- caller owns the parent), fits (the CHECK and routing expression of a half: format(fits, prefix,
-- remainder), the prefix such as 'new.' before the key column).
-- Errors: PM001 when the table is not hash-partitioned, has an expression key or no primary key,
-- the source is sub-partitioned or missing, 2m would exceed 1024, or a name would exceed
-- PostgreSQL's 63-byte identifier limit. Locks: none.
create or replace function partman.split_plan(parent regclass, modulus integer, remainder integer)
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $function$
declare
    t record;
    src record;
    m2 integer := 2 * modulus;
    low text;
    high text;
    longest text;
begin
    select n.nspname as schema, c.relname as name, pt.partstrat, pt.partattrs::int2[] as attrs,
           pg_get_userbyid(c.relowner) as owner,
           (select string_agg(quote_ident(a.attname), ', ' order by a.attnum) from pg_attribute as a
            where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped) as cols,
           array(select a.attname::text from pg_index as x, unnest(x.indkey::int2[]) with ordinality as k(attnum, o)
                 join pg_attribute as a on a.attnum = k.attnum
                 where x.indrelid = c.oid and x.indisprimary and a.attrelid = c.oid order by k.o) as pk,
           array(select format_type(a.atttypid, a.atttypmod) from pg_index as x,
                        unnest(x.indkey::int2[]) with ordinality as k(attnum, o)
                 join pg_attribute as a on a.attnum = k.attnum
                 where x.indrelid = c.oid and x.indisprimary and a.attrelid = c.oid order by k.o) as pk_types,
           array(select a.attname::text from pg_attribute as a where a.attrelid = c.oid and a.attnum > 0
                 and not a.attisdropped and a.attnum <> all (coalesce((select x.indkey::int2[] from pg_index as x
                     where x.indrelid = c.oid and x.indisprimary), '{}')) order by a.attnum) as non_key
    into t
    from pg_partitioned_table as pt join pg_class as c on c.oid = pt.partrelid
    join pg_namespace as n on n.oid = c.relnamespace where c.oid = parent;
    if t.partstrat <> 'h' then
        perform partman.refuse(format('%s.%s is not hash-partitioned: only hash partitions can be split', t.schema, t.name));
    elsif cardinality(t.attrs) <> 1 or t.attrs[array_lower(t.attrs, 1)] = 0 then
        perform partman.refuse(format('%s.%s is partitioned by an expression or several columns: split supports '
                                      'one key column only', t.schema, t.name));
    elsif cardinality(t.pk) = 0 then
        perform partman.refuse(format('%s.%s has no primary key: split copies by keyset and mirrors by key',
                                      t.schema, t.name));
    end if;
    select c.rel, c.name, c.state, c.sub into src from (
        select p.part as rel, p.name, case when p.pending then 'detach pending' else 'attached' end as state,
               p.sub_partitioned as sub, case when p.pending then 2 else 1 end as o
        from partman.partitions(parent) as p where p.modulus = split_plan.modulus and p.remainder = split_plan.remainder
        union all
        select l.rel, l.name, 'detached', false, 3 from partman.loose_tables(parent) as l
        where l.modulus = split_plan.modulus and l.remainder = split_plan.remainder and l.role in ('detached', 'stray')
    ) as c order by c.o limit 1;
    if src.rel is null then
        perform partman.refuse(format('split of %s.%s_m%s_r%s: the source table is missing; its targets cannot be '
                                      'completed automatically', t.schema, t.name, modulus, remainder));
    elsif src.sub then
        perform partman.refuse(format('%s is itself partitioned: split it level by level by hand', src.name));
    elsif m2 > 1024 then
        perform partman.refuse(format('%s has modulus %s: doubling it exceeds the maximum of 1024', src.name, modulus));
    end if;
    low := format('%s_m%s_r%s', t.name, m2, remainder);
    high := format('%s_m%s_r%s', t.name, m2, remainder + modulus);
    select n into longest from unnest(array[low || '_split_check', high || '_split_check',
                                            split_part(src.name, '.', 2) || '_split_mirror',
                                            split_part(src.name, '.', 2) || '_split_old']) as n
    where octet_length(n) > 63;
    if found then
        perform partman.refuse(format('the name %L would exceed PostgreSQL''s 63-byte identifier limit', longest));
    end if;
    return jsonb_build_object(
        'parent', format('%I.%I', t.schema, t.name), 'parent_name', t.schema || '.' || t.name, 'schema', t.schema,
        'modulus', modulus, 'remainder', remainder, 'state', src.state,
        'source', format('%I.%I', t.schema, split_part(src.name, '.', 2)), 'source_name', src.name,
        'source_oid', src.rel::oid,
        'low', format('%I.%I', t.schema, low), 'low_name', low, 'high', format('%I.%I', t.schema, high), 'high_name', high,
        'low_slice', jsonb_build_array(m2, remainder), 'high_slice', jsonb_build_array(m2, remainder + modulus),
        'fits', format('satisfies_hash_partition(%L::regclass, %s, %%2$s, %%1$s%I)',
                       format('%I.%I', t.schema, t.name), m2,
                           (select a.attname from pg_attribute as a where a.attrelid = parent and a.attnum = t.attrs[array_lower(t.attrs, 1)])),
        'cols', t.cols, 'pk', (select string_agg(quote_ident(c), ', ') from unnest(t.pk) as c),
        'pk_list', to_jsonb(t.pk), 'non_key', to_jsonb(t.non_key),
        'pk_typed', (select string_agg(format('($1[%s])::%s', o, ty), ', ' order by o)
                     from unnest(t.pk_types) with ordinality as k(ty, o)),
        'pk_text', (select string_agg(format('%I::text', c), ', ' order by o) from unnest(t.pk) with ordinality as k(c, o)),
        'pk_desc', (select string_agg(format('%I desc', c), ', ' order by o) from unnest(t.pk) with ordinality as k(c, o)),
        'owner', case when t.owner <> current_user then t.owner end,
        'mirror_function', format('%I.%I', t.schema, split_part(src.name, '.', 2) || '_split_mirror'),
        'retired_name', split_part(src.name, '.', 2) || '_split_old',
        'mirror_lock_key', case when src.rel::oid::bigint >= 2147483648 then src.rel::oid::bigint - 4294967296
                                else src.rel::oid::bigint end);
end
$function$;
