"""The retriever as an MLflow pyfunc model ("models from code": MLflow runs this file; nothing
of tans is pickled; tans itself travels with the model as its code).

`mlflow.pyfunc.load_model("models:/tans-retriever@champion").predict(df, params)` takes one
query dataset and returns the zoo's networks ranked for it, best first, one row per network
with the columns of a `tans search --json` hit and its `rank`:

- `df` with columns `image` (each row one encoded image: PNG, JPEG) and `label` (its class,
  an integer): ranked exactly as `tans search` ranks those images
  (`tans.retriever.query.rank_query`), by default with the same ordering (`finetune`). It
  reads the zoo the version was trained on, or the one `model_config={"zoo": URI}` names;
- `df` with a column `features` (one row per query image, its backbone feature vector of
  `meta.json`'s `image_dim` floats) or `image` alone: ranked from the version's files
  without the query's labels, so only by an ordering that needs no images, `source` or `none`
  (pass `params={"rerank": "source"}`).

`params`: `top_k` (10), `rerank` (`finetune`; or source, none, logme, knn), `finetune_top`,
`budget` (seconds the fine-tunes may take, 10; 0: no bound), and the constraints
`max_params`, `max_flops`, `max_latency_ms` (0: no limit).
"""

from __future__ import annotations

import json
from dataclasses import asdict

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from tans.retriever import proxy
from tans.retriever.features import embed_images, load_backbone
from tans.retriever.model import Retriever
from tans.retriever.query import rank_query
from tans.retriever.rerank import DEFAULT_RERANK, source_over_chance
from tans.retriever.search import RECALL, Constraints, imageless_score, top_by_cosine
from tans.retriever.train import embeddings_of
from tans.zoo_schema.errors import TansError
from tans.zoo_schema.manifest import read_manifest
from tans.zoo_schema.store import open_store

COLUMNS = ("job_id", "dataset_id", "arch", "params", "flops", "latency_ms", "checkpoint_uri")


class RetrieverModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.meta = json.loads(open(context.artifacts["meta"]).read())
        self.model = Retriever(self.meta["image_dim"], self.meta["func_dim"])
        self.model.load_state_dict(load_file(context.artifacts["weights"]))
        self.model.eval()
        self.table = pq.read_table(context.artifacts["models"])
        self.embeddings = embeddings_of(self.table["embedding"]).copy()  # writable, for torch
        self.source_accuracy = np.asarray(self.table["accuracy"].to_pylist(), dtype=np.float64)
        self.source_fit = source_over_chance(self.source_accuracy, self.table["num_classes"].to_pylist())
        config = context.model_config or {}
        self.zoo, self.version = config.get("zoo", ""), config.get("version")
        self._backbone = None

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        params = params or {}
        df = pd.DataFrame(model_input)
        top_k = int(params.get("top_k", 10))
        rerank = str(params.get("rerank", DEFAULT_RERANK))
        constraints = Constraints(
            *(float(params[k]) if params.get(k) else None for k in ("max_params", "max_flops", "max_latency_ms"))
        )
        if "image" in df and "label" in df:
            found = rank_query(
                open_store(self.zoo),
                [bytes(b) for b in df["image"]],
                [int(v) for v in df["label"]],
                constraints,
                top_k,
                rerank,
                finetune_top=int(params.get("finetune_top", proxy.FINETUNE_TOP)),
                budget=float(params.get("budget", proxy.SECONDS)),
                version=self.version,
            )
            return pd.DataFrame([{"rank": i, **asdict(h)} for i, h in enumerate(found.hits, 1)])
        if rerank not in ("source", "none"):
            raise TansError(
                f"ordering {rerank!r} needs the query's labelled images: give the columns 'image' and "
                "'label', or rank feature vectors (or unlabelled images) with params={'rerank': 'source'}"
            )
        return self._imageless(self._features(df), constraints, top_k, rerank)

    def _features(self, df: pd.DataFrame) -> np.ndarray:
        if "features" in df:
            return np.asarray(df["features"].tolist(), dtype=np.float32)
        if "image" in df:
            if self._backbone is None:
                store = open_store(self.zoo)
                self._backbone = load_backbone(store, read_manifest(store), self.meta.get("backbone_key", ""))
            return embed_images(self._backbone, [bytes(b) for b in df["image"]], self.meta["image_size"])
        raise TansError(
            "the input needs the columns 'image' and 'label' (the query's images and their classes), "
            "or a column 'features' (one backbone feature vector per query image)"
        )

    def _imageless(self, features: np.ndarray, constraints: Constraints, top_k: int, rerank: str) -> pd.DataFrame:
        """Rank the version's networks from its files alone (as `Searcher.search` does)."""
        columns = {c: self.table[c].to_pylist() for c in COLUMNS}
        ok = constraints.mask(
            np.asarray(columns["params"], float), np.asarray(columns["flops"], float), np.asarray(columns["latency_ms"])
        )
        with torch.no_grad():
            q = self.model.encode_query(torch.from_numpy(features))
            top, scores = top_by_cosine(self.embeddings, q.numpy(), ok, max(RECALL, top_k))
            predicted = self.model.predict(q, torch.from_numpy(self.embeddings)).numpy()
        rank_score, ranked_by = imageless_score(rerank, predicted, self.source_fit)  # over the whole table
        order = sorted(top, key=lambda i: (-rank_score[i], -scores[i]))[:top_k]
        return pd.DataFrame(
            [
                {
                    "rank": rank,
                    **{c: columns[c][i] for c in COLUMNS},
                    "score": float(scores[i]),
                    "predicted_accuracy": float(predicted[i]),
                    "source_accuracy": float(self.source_accuracy[i]),
                    "rank_score": float(rank_score[i]),
                    "ranked_by": ranked_by,
                    "weak_match": bool(scores[i] < 0),
                    "proxy_loss": None,
                }
                for rank, i in enumerate(map(int, order), 1)
            ]
        )


mlflow.models.set_model(RetrieverModel())
