"""The networks toolkit and the job a Ray worker runs: the OFA arch space and subnets
(`ofa_space`), weights files (`weights`), images (`images`), networks (`nets`), the
training loop (`training`), measurements (`measure`), the job spec (`job`) and `run.run_job`.
Imports only `zoo_schema`."""
