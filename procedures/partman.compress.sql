-- partman.compress(slots, total): a set of slots of the hash space Z_total described as few
-- (modulus, remainder) slices as possible, coarsest first: slots {3, 19} of 32 are the slice
-- (16, 3); {3} is (32, 3). Greedy: each divisor d of total in increasing order takes every
-- slice (d, r) whose slots are all still left.
--
-- Inputs: slot numbers in [0, total), total >= 1. Output: the slices in order. Errors: none.
-- Locks: none.
create or replace function partman.compress(slots integer[], total integer)
returns table (modulus integer, remainder integer)
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $function$
declare
    is_left boolean[] := array_fill(false, array[total]);
    remaining integer := 0;
    slot integer;
    whole boolean;
begin
    foreach slot in array array(select distinct s from unnest(slots) as s) loop
        is_left[slot + 1] := true;
        remaining := remaining + 1;
    end loop;
    for d in 1 .. total loop
        exit when remaining = 0;
        continue when total % d <> 0;
        for r in 0 .. d - 1 loop
            whole := true;
            for slot in r .. total - 1 by d loop
                if not is_left[slot + 1] then
                    whole := false;
                    exit;
                end if;
            end loop;
            continue when not whole;
            for slot in r .. total - 1 by d loop
                is_left[slot + 1] := false;
                remaining := remaining - 1;
            end loop;
            modulus := d;
            remainder := r;
            return next;
        end loop;
    end loop;
end
$function$;
