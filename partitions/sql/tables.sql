-- Every top-level partitioned table of the schema %(schema)s, one row each (partitions/catalog.py makes the
-- records): its key (none when it has an expression), columns and primary key in order, its partitions and
-- the unattached tables named `<table>_m...` (targets of an unfinished split, old partitions of a finished
-- one, or strays: catalog.py sorts them out by name).
select c.oid, c.relname, pt.partstrat, pg_get_userbyid(c.relowner) as owner,
       case when 0 = any (pt.partattrs::int2[]) then '{}'::text[] else array(
           select a.attname::text from unnest(pt.partattrs::int2[]) with ordinality as k(attnum, ord)
           join pg_attribute as a on a.attrelid = c.oid and a.attnum = k.attnum order by k.ord) end as key_columns,
       array(select attname::text from pg_attribute
             where attrelid = c.oid and attnum > 0 and not attisdropped order by attnum) as columns,
       array(select a.attname::text from pg_index as x, unnest(x.indkey::int2[]) with ordinality as k(attnum, ord)
             join pg_attribute as a on a.attnum = k.attnum
             where x.indrelid = c.oid and x.indisprimary and a.attrelid = x.indrelid order by k.ord) as primary_key,
       (select coalesce(jsonb_agg(jsonb_build_array(p.oid, pn.nspname, p.relname, pg_get_expr(p.relpartbound, p.oid),
                                                    i.inhdetachpending, p.relkind = 'p', p.reltuples,
                                                    pg_total_relation_size(p.oid))), '[]')
        from pg_inherits as i join pg_class as p on p.oid = i.inhrelid
        join pg_namespace as pn on pn.oid = p.relnamespace
        where i.inhparent = c.oid) as partitions,
       (select coalesce(jsonb_agg(jsonb_build_array(l.oid, l.relname, l.reltuples, pg_total_relation_size(l.oid),
                                                    exists (select from pg_constraint as k where k.conrelid = l.oid
                                                            and k.contype = 'c'
                                                            and k.conname = l.relname || %(check_suffix)s))), '[]')
        from pg_class as l
        where l.relnamespace = c.relnamespace and l.relkind in ('r', 'p') and not l.relispartition
          and starts_with(l.relname, c.relname || '_m')) as loose
from pg_partitioned_table as pt join pg_class as c on c.oid = pt.partrelid
join pg_namespace as n on n.oid = c.relnamespace
where n.nspname = %(schema)s and not c.relispartition
order by c.relname
