"""tans' top layer: the commands users run and what they need (see README "Architecture").

- `cli`: the `tans` command line;
- `commands/`: one module per command that is more than a call (status, report, verify,
  search, submit, finetune, pretrain-base, retrain);
- `build/`: the build runtime (config, driver, executors, lease, signals, tracking, progress);
- `acquisition/`: which (dataset, architecture) pairs to train next (paper Algorithm 1);
- `datasets/`: ingestion of user data and the built-in synthetic suite.
"""
