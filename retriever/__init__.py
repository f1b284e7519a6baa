"""tans retriever: meta-contrastive encoders over the zoo, retraining, and constrained search."""
