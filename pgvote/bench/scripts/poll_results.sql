-- R5 readers: poll_results of the hot poll (1,000,000 ballots), read-only.
select api.poll_results(:poll);
