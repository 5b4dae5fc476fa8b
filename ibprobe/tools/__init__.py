"""Tools around a run: `plan` (the jobs, their time and cost before a long run) and `validate` (the estimator on
synthetic images whose answers are known exactly)."""
