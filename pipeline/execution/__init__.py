"""The build runtime: `run.run_build` composes the config, the zoo's lease, an executor
(Ray or replay), MLflow tracking and the driver that steps the acquisition loop."""
