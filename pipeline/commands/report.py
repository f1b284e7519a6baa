"""`tans report ZOO --out DIR`: an HTML page with PNG plots of what the zoo holds.

- the accuracy of every network per dataset, datasets sorted by their best accuracy, each
  dataset's chance level (1/classes) drawn and the datasets at chance (best accuracy under
  1.5x chance) marked; a strip of points, with a box only from `BOX_MIN` networks on;
- one Pareto-front figure per dataset: accuracy against latency and against parameters, the
  (accuracy, latency, params) front's networks filled and labelled with their job id, the
  chance level drawn; a table of the front's networks (job id, arch, accuracy, params,
  latency) under each;
- the mean normalized hypervolume as the zoo grew (one point per committed result);
- a 2-D map (PCA) of the newest retriever's latent space: every model embedding, and each
  dataset's query embedding (its test images); labels that would overlap are left out.

Every plot colours a dataset by its family (the id's prefix before the first '-'), with a
legend of families. The PNGs are written at `DPI` and shown at their natural size, with
text of at least `MIN_TEXT_PX` pixels; points carry `title` tooltips through image maps.

The page is static (index.html next to its PNGs) and needs no server. Once loaded, a
small script records on <body> how many of its images decoded (`data-images-loaded`),
which the tests read back from headless Chromium. The zoo is only read (`ReadOnlyStore`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from tans.pipeline.commands.report_figures import (
    accuracy_figure,
    hypervolume_figure,
    latent_figure,
    latent_points,
    pareto_figure,
)
from tans.pipeline.commands.report_page import Figure, page
from tans.pipeline.commands.report_plots import CHANCE_FACTOR, DatasetView, _safe, dataset_views
from tans.pipeline.commands.status import hypervolumes, zoo_status
from tans.zoo_schema.outfiles import output_folder, write_file
from tans.zoo_schema.results import read_state
from tans.zoo_schema.store import ZooStore


class ReadOnlyStore(ZooStore):
    """A view of a zoo that never writes: writes are dropped (a cache the report would fill is
    simply recomputed), deletes refused."""

    def __init__(self, inner: ZooStore):
        self.inner, self.uri = inner, inner.uri

    def read_bytes(self, key):
        return self.inner.read_bytes(key)

    def write_bytes(self, key, data, create_only=False):
        return False

    def exists(self, key):
        return self.inner.exists(key)

    def list(self, prefix):
        return self.inner.list(prefix)

    def delete(self, key):
        raise PermissionError(f"the report only reads the zoo; it does not delete {key}")

    def arrow_filesystem(self):
        return self.inner.arrow_filesystem()


def write_report(store: ZooStore, out: str, log=print) -> Path:
    """Render the report in a private temp folder, then publish each file into `out` whole,
    never through a link planted there (`tans.zoo_schema.outfiles`); returns its index.html."""
    target = output_folder(out)
    with tempfile.TemporaryDirectory(prefix="tans-report-") as tmp:
        plots = render_report(store, Path(tmp))
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_file():
                rel = path.relative_to(tmp)
                write_file(output_folder(target / rel.parent), rel.name, path.read_bytes())
    log(f"report written to {target / 'index.html'} ({plots} plots)")
    return target / "index.html"


def render_report(store: ZooStore, folder: Path) -> int:
    """Write the report's page, status and figures into `folder` (a fresh one); returns the plots."""
    store = ReadOnlyStore(store)
    state = read_state(store)
    (folder / "pareto").mkdir(parents=True, exist_ok=True)
    hv = hypervolumes(store, state)
    status = zoo_status(store, state)
    views = dataset_views(state)
    colours = {v.family: v.colour for v in views}
    figures: list[Figure] = []
    fronts: list[tuple[DatasetView, Figure]] = []
    retriever = False
    if state.results:
        areas = accuracy_figure(views, folder / "accuracy.png")
        at_chance = sum(v.at_chance for v in views)
        figures.append(
            Figure(
                "Accuracy per dataset",
                "accuracy.png",
                f"Datasets sorted by their best accuracy; black tick = chance (1/classes); "
                f"{at_chance} datasets at chance (best accuracy < {CHANCE_FACTOR:g}x chance) "
                "shaded red.",
                areas,
            )
        )
        points = latent_points(store)
        if points is not None:
            retriever = True
            areas, skipped = latent_figure(points, colours, folder / "latent.png")
            figures.append(
                Figure(
                    f"Retriever latent space (v{points['version']}, PCA)",
                    "latent.png",
                    "Dots = the zoo's models, stars = each dataset's query (its test images), "
                    "coloured by family. "
                    + (
                        f"{skipped} star labels left out where they would overlap; hover a star for its dataset."
                        if skipped
                        else "Hover a point for its dataset."
                    ),
                    areas,
                )
            )
        if hv[1]:
            hypervolume_figure(hv[1], folder / "hypervolume.png")
            figures.append(Figure("Mean normalized hypervolume as the zoo grew", "hypervolume.png"))
        for v in views:
            if v.results:
                name = f"pareto/{_safe(v.dataset_id)}.png"
                areas = pareto_figure(v, folder / name)
                fronts.append((v, Figure(f"Pareto front of {v.dataset_id}", name, "", areas)))
    (folder / "index.html").write_text(page(status, views, figures, fronts, retriever, folder, colours))
    (folder / "status.json").write_text(json.dumps(status.as_dict(), indent=1))
    return len(figures) + len(fronts)


def log_report(store: ZooStore, tracking_uri: str, run_id: str) -> None:
    """Write the report to a temporary folder and log it as the run's `report/` artifacts."""
    with tempfile.TemporaryDirectory() as tmp:
        render_report(store, Path(tmp))
        MlflowClient(tracking_uri=tracking_uri).log_artifacts(run_id, tmp, "report")
