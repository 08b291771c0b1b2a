"""The thin CLI of the partition manager, whose logic is the schema partman (procedures/partman.*.sql)."""
