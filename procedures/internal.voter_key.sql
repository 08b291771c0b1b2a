-- internal.voter_key(identity): HMAC-SHA256(installation secret, identity), the only
-- form in which a voter (JWT sub or fingerprint) is stored. cast_vote reads the pads with
-- its poll and calls internal.hmac_sha256 itself, saving this query on the vote path.
-- PL/pgSQL rather than SQL: a SQL function that cannot be inlined is planned again on
-- every call, a PL/pgSQL one keeps its plan for the session.
create or replace function internal.voter_key(identity text) returns bytea
language plpgsql
stable
parallel safe
as $function$
declare
    key bytea;
begin
    select internal.hmac_sha256(s.inner_pad, s.outer_pad, identity) into key
    from internal.voter_key_secret as s;
    return key;
end
$function$;
