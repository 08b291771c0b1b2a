"""The hash-partition manager of pgvote's partitioned tables (see partitions/layout.py)."""
