-- internal.add_vectors(a, b): element-wise sum of two equally long count vectors.
-- A PL/pgSQL loop of simple expressions: no query to plan on the vote path (a SQL
-- function over unnest() is planned again on every call).
create or replace function internal.add_vectors(a bigint[], b bigint[]) returns bigint[]
language plpgsql
immutable
parallel safe
as $function$
declare
    total bigint[] := a;
begin
    for i in 1 .. cardinality(b) loop
        total[i] := coalesce(total[i], 0) + b[i];
    end loop;
    return total;
end
$function$;
