"""The zoo: the bottom layer, importing nothing else of tans. Storage backends (`store`),
the records and their Parquet schema (`records`), where every key lives (`layout`), the
manifest, results and their snapshot, journals, dataset shards, errors and redaction."""
