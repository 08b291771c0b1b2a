-- partman.coverage(names, moduli, remainders): is a hash space covered exactly once by these
-- bounds? A hash partition (m, r) holds the rows whose key hash h satisfies h mod m = r. Over
-- L = lcm of all moduli (PostgreSQL requires each modulus to divide the next larger one, so L is
-- the largest; synthetic inputs may be arbitrary) slot s in [0, L) is covered by (m, r) iff
-- s mod m = r. Healthy: every slot covered exactly once, no gap (an insert there fails with "no
-- partition of relation found for row") and no overlap (PostgreSQL refuses overlapping hash
-- bounds, so overlaps only appear in hand-made bound lists). Two bounds overlap iff their
-- remainders agree modulo the gcd of their moduli, which keeps the pair loop cheap.
--
-- Inputs: three arrays of the same length. Output: one row per finding, none when healthy:
-- ('gap', null, null, m, r) per missing slice (compressed, coarsest first), ('overlap', a, b, m, r)
-- per slice both a and b claim, ('invalid', text, null, null, null) per bound that is no slice.
-- Errors: 22023 when L exceeds 2^20 slots (co-prime synthetic moduli). Locks: none.
create or replace function partman.coverage(names text[], moduli integer[], remainders integer[])
returns table (kind text, first text, second text, modulus integer, remainder integer)
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $function$
declare
    total integer := 1;
    valid integer[] := '{}'::integer[];
begin
    for i in 1 .. coalesce(cardinality(names), 0) loop
        if moduli[i] < 1 or remainders[i] < 0 or remainders[i] >= moduli[i] then
            return query select 'invalid', format('%s: modulus %s, remainder %s', names[i], moduli[i], remainders[i]),
                                null::text, null::integer, null::integer;
        else
            valid := valid || i;
            total := lcm(total::bigint, moduli[i]::bigint)::integer;
            if total > 1 << 20 then
                raise exception 'the moduli have a least common multiple above %: too large to check slot by slot',
                    1 << 20 using errcode = '22023';
            end if;
        end if;
    end loop;
    return query
        select 'gap', null::text, null::text, c.modulus, c.remainder
        from partman.compress(array(select s from generate_series(0, total - 1) as s
                                    where not exists (select from unnest(valid) as k
                                                      where s % moduli[k] = remainders[k])), total) as c;
    return query
        select 'overlap', names[a], names[b], c.modulus, c.remainder
        from unnest(valid) as a, unnest(valid) as b,
             lateral partman.compress(array(select s from generate_series(remainders[a], total - 1, moduli[a]) as s
                                            where s % moduli[b] = remainders[b]), total)
                     with ordinality as c(modulus, remainder, o)
        where a < b and (remainders[a] - remainders[b]) % gcd(moduli[a], moduli[b]) = 0
        order by names[a], names[b], c.o;
end
$function$;
