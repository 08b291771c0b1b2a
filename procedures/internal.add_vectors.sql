-- internal.add_vectors(a, b): element-wise sum of two equally long count vectors.
-- No SET clause, so the planner can inline it.
create or replace function internal.add_vectors(a bigint[], b bigint[]) returns bigint[]
language sql
immutable
parallel safe
as $function$
    select array_agg(x + y order by i) from unnest(a, b) with ordinality as u(x, y, i)
$function$;
