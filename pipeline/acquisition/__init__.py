"""Acquisition: which (dataset, architecture) pairs the zoo trains next.

`base` (the Policy interface and its contract), `registry` (policies by strategy name),
`random` and `pareto` (the policies), `predictor` (the MC-dropout accuracy predictor),
`hypervolume` (normalized Pareto hypervolumes) and `profiles` (the candidate pool's
measured costs and functional embeddings). Importing the package registers every policy.
"""
from pipeline.acquisition import pareto, random  # noqa: F401 (each registers its policy)
