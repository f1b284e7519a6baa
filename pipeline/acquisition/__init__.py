"""Acquisition: which (dataset, architecture) pairs the zoo trains next.

`base` (the Policy interface and its contract), `registry` (policies by strategy name),
`random` and `pareto` (the policies), `peers` (Optuna's NSGA-II and TPE and BoTorch's
qNEHVI as policies: strategies nsga2, tpe, qnehvi), `predictor` (the MC-dropout accuracy
predictor), `hypervolume` (normalized Pareto hypervolumes, per dataset and as the zoo grew),
`priors` (the candidate pool's costs and functional embeddings and the datasets' features,
as cached: reading them) and `compute_priors` (measuring and caching them).
"""
