-- internal.voter_key(identity): HMAC-SHA256(installation secret, identity), the only
-- form in which a voter (JWT sub or fingerprint) is stored. Uses the builtin sha256()
-- with the precomputed pads of internal.voter_key_secret: no extension needed.
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
    select sha256(s.outer_pad || sha256(s.inner_pad || convert_to(identity, 'UTF8'))) into key
    from internal.voter_key_secret as s;
    return key;
end
$function$;
