-- internal.voter_key(identity): HMAC-SHA256(installation secret, identity), the only
-- form in which a voter (JWT sub or fingerprint) is stored. Uses the builtin sha256()
-- with the precomputed pads of internal.voter_key_secret: no extension needed.
create or replace function internal.voter_key(identity text) returns bytea
language sql
stable
parallel safe
set search_path = pg_catalog, pg_temp
as $function$
    select sha256(s.outer_pad || sha256(s.inner_pad || convert_to(identity, 'UTF8')))
    from internal.voter_key_secret as s
$function$;
