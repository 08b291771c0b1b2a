-- Undo revision 0001. Roles are cluster-wide and stay (see db/roles.sql).
drop schema if exists api cascade;
drop schema if exists voting cascade;
drop schema if exists internal cascade;
alter default privileges grant execute on functions to public;
