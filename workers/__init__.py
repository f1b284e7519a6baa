"""What a Ray worker runs: the job spec (`job`), fine-tuning one pair and committing it
(`run.run_job`), the warm worker's cache (`cache`) and measuring pool architectures
(`measure_archs`). The networks themselves are in `networks`. Imports only `zoo_schema`."""
