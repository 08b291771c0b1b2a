-- Revision 0005: the schema of the partition manager (status, verify, create and the online split
-- of hash partitions). FROZEN once merged: a change is a new numbered file. The routines are
-- procedures/partman.*.sql; nobody but the owner and superusers may execute them (db/grants.sql).
create schema partman;
comment on schema partman is
    'The partition manager: catalog reports and the online split of hash partitions. Run by the database owner only.';
