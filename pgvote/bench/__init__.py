"""`pgvote bench`: pgbench scenarios, same-run ratios, and the benchmark report."""
