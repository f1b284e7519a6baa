"""Datasets in: ingestion of user data (ImageFolder or Parquet, local or S3) and the
built-in suite of generated datasets."""
