-- internal.voter_identity(allow_anonymous, voter_fingerprint): who is voting, as a
-- domain-separated identity: 'sub:<jwt sub>' for JWT callers, 'fp:<fingerprint>' for
-- anonymous ones. A JWT caller's fingerprint is ignored, so nobody can vote as somebody
-- else by putting a fingerprint in the body.
--
-- Errors, in the contract's precedence: login_required (401) for an anonymous caller on
-- a members-only poll or a JWT without a usable sub; invalid_fingerprint (400) for an
-- anonymous caller whose fingerprint is missing, empty, over 256 characters or contains
-- control characters.
create or replace function internal.voter_identity(
    allow_anonymous boolean,
    voter_fingerprint text
) returns text
language plpgsql
stable
as $function$
declare
    request_role text := coalesce(
        nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role', 'anon');
begin
    if request_role <> 'anon' then
        return 'sub:' || internal.jwt_sub();
    end if;
    if not allow_anonymous then
        perform internal.raise_api_error('login_required',
            'This poll accepts votes from signed-in users only.');
    end if;
    if voter_fingerprint is null
       or char_length(voter_fingerprint) not between 1 and 256
       or voter_fingerprint ~ '[[:cntrl:]]' then
        perform internal.raise_api_error('invalid_fingerprint',
            'Anonymous votes need a voter_fingerprint of 1-256 printable characters.');
    end if;
    return 'fp:' || voter_fingerprint;
end
$function$;
