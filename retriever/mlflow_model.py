"""The retriever as an MLflow pyfunc model ("models from code": MLflow runs this file; nothing
of tans is pickled).

`mlflow.pyfunc.load_model("models:/tans-retriever@champion").predict(df)` takes one query
dataset and returns the zoo's networks ranked for it (best first), as a DataFrame with
`rank, job_id, dataset_id, arch, params, flops, latency_ms, score, predicted_accuracy,
source_accuracy, rank_score, ranked_by`, ordered as `tans search` orders them without the
query's images (`tans.retriever.search.imageless_score`; ranks are taken over every network of the
version, where search takes them over the networks whose results are still live):

- `df` with a column `features`: one row per query image, each its backbone feature vector
  (`meta.json`'s `image_dim` floats, as `tans.retriever.features` computes them), or
- `df` with a column `image`: one row per query image, its encoded bytes (PNG, JPEG); the
  backbone is then loaded from the zoo the version was trained on (it must be reachable).

`params={"top_k": N, "rerank": "source" | "none"}` limits the ranking and picks the order
(default: source, the best ordering that needs no network run on images; `tans search`'s
default, finetune, fine-tunes networks on the query's images, which only `tans search` does).
The artifacts are the version's files
(`weights.safetensors`, `models.parquet`, `meta.json`); the code needs tans installed.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from tans.retriever.features import embed_images, load_backbone
from tans.retriever.model import Retriever
from tans.retriever.rerank import DEFAULT_IMAGELESS, source_over_chance
from tans.retriever.search import RECALL, imageless_score, top_by_cosine
from tans.zoo_schema.manifest import read_manifest
from tans.zoo_schema.store import open_store


class RetrieverModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.meta = json.loads(open(context.artifacts["meta"]).read())
        self.model = Retriever(self.meta["image_dim"], self.meta["func_dim"])
        self.model.load_state_dict(load_file(context.artifacts["weights"]))
        self.model.eval()
        self.table = pq.read_table(context.artifacts["models"])
        self.embeddings = np.asarray(self.table["embedding"].to_pylist(), dtype=np.float32).reshape(-1, 128)
        self.source_accuracy = np.asarray(self.table["accuracy"].to_pylist(), dtype=np.float64)
        self.source_fit = source_over_chance(self.source_accuracy, self.table["num_classes"].to_pylist())
        self.zoo = (context.model_config or {}).get("zoo", "")
        self._backbone = None

    def _features(self, model_input: pd.DataFrame) -> np.ndarray:
        if "features" in model_input:
            return np.asarray(model_input["features"].tolist(), dtype=np.float32)
        if "image" in model_input:
            if self._backbone is None:
                store = open_store(self.zoo)
                self._backbone = load_backbone(store, read_manifest(store), self.meta.get("backbone_key", ""))
            return embed_images(self._backbone, [bytes(b) for b in model_input["image"]], self.meta["image_size"])
        raise ValueError(
            "the input needs a column 'features' (one feature vector per query image) "
            "or 'image' (one encoded image per row)"
        )

    def predict(self, context, model_input, params=None):
        top_k = int((params or {}).get("top_k", 10))
        rerank = str((params or {}).get("rerank", DEFAULT_IMAGELESS))
        features = self._features(pd.DataFrame(model_input))
        with torch.no_grad():
            q = self.model.encode_query(torch.from_numpy(features))
            top, scores = top_by_cosine(
                self.embeddings, q.numpy(), np.ones(len(self.embeddings), bool), max(RECALL, top_k)
            )
            predicted = self.model.predict(
                q.expand(len(self.embeddings), -1), torch.from_numpy(self.embeddings)
            ).numpy()
        rank_score, ranked_by = imageless_score(rerank, predicted, self.source_fit)  # over the whole table
        order = sorted(top, key=lambda i: (-rank_score[i], -scores[i]))[:top_k]
        rows = []
        for rank, i in enumerate(order, 1):
            i = int(i)
            rows.append(
                {
                    "rank": rank,
                    **{
                        c: self.table[c][i].as_py()
                        for c in ("job_id", "dataset_id", "arch", "params", "flops", "latency_ms")
                    },
                    "score": float(scores[i]),
                    "predicted_accuracy": float(predicted[i]),
                    "source_accuracy": float(self.source_accuracy[i]),
                    "rank_score": float(rank_score[i]),
                    "ranked_by": ranked_by,
                }
            )
        return pd.DataFrame(rows)


mlflow.models.set_model(RetrieverModel())
