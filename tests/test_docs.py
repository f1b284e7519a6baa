"""Every snippet of the README and docs/ runs: each ```python block is executed, each ```sh
line is executed or (the long ones: a build, `make`) parsed by the real command line, each
```toml block is loaded as a build config, all in a small project laid out like the demo's
(`demo/zoo` built for real, `demo/query/...`, `my-datasets/...`). ```text blocks are output and
layouts, not commands. The site itself builds with warnings as errors in `make docs`."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tans.pipeline.cli import parser
from tans.pipeline.execution.config import load_config
from tans.zoo_schema.results import read_results
from tans.zoo_schema.store import open_store
from tests.helpers import build_overrides

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```$", re.M | re.S)
# what a line may start with and is only parsed, not run here: a whole build (the suite builds
# for real elsewhere), the make targets (CI runs `make test`), the shell's own set-up, a server
# that runs until stopped (test_day2.py serves the retriever for real)
PARSED_ONLY = ("tans build", "make ", "source ", "export ", "mlflow models serve ")


def blocks(kind: str) -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        for m in FENCE.finditer(page.read_text()):
            if m.group(2) == kind:
                body = "\n".join(line[len(m.group(1)) :] for line in m.group(3).splitlines())
                out.append((f"{page.relative_to(ROOT)}:{page.read_text()[: m.start()].count(chr(10)) + 1}", body))
    return out


def test_every_block_says_what_it_is():
    for page in PAGES:
        for m in FENCE.finditer(page.read_text()):
            assert m.group(2) in ("python", "sh", "toml", "text"), f"{page.name}: a ``` block tagged {m.group(2)!r}"


@pytest.fixture(scope="module")
def project(ray_cluster, tiny_datasets, tmp_path_factory):
    """A folder laid out like the demo's: demo/zoo (3 real networks, a registered retriever),
    demo/query/glyphs-hebrew-clean, my-datasets/flowers, demo.toml."""
    from tans.pipeline.execution.run import run_build

    root = tmp_path_factory.mktemp("project")
    (root / "demo" / "query").mkdir(parents=True)
    shutil.copytree(tiny_datasets / "glyphs-digits-clean", root / "demo" / "query" / "glyphs-hebrew-clean")
    shutil.copytree(tiny_datasets / "shapes-clean", root / "my-datasets" / "flowers")
    data = root / "demo" / "datasets"
    for name in ("hue-6", "digits-sklearn"):
        shutil.copytree(tiny_datasets / name, data / name)
    o = build_overrides(
        str(root / "demo" / "zoo"),
        data,
        root,
        max_jobs=3,
        **{
            "retrain.after_build": True,
            "retrain.steps": 20,
            "mlflow.tracking_uri": f"sqlite:///{root / 'demo' / 'mlflow.db'}",
            "address": ray_cluster.address_info["gcs_address"],
        },
    )
    run_build(load_config(None, o), log=lambda *_: None)
    (root / "demo.toml").write_text((ROOT / "demo.toml").read_text())
    return root


def run_in(project: Path, argv: list[str], ray_address: str) -> subprocess.CompletedProcess:
    """`argv` in the project, from a shell set up as the docs say for builds: the tracking URI
    and the Ray address (the module's Ray: `tans finetune` trains there) in the environment."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'demo' / 'mlflow.db'}",
        "RAY_ADDRESS": ray_address,
        "RAY_AUTH_MODE": "token",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    return subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, timeout=600)


def page_blocks(page: Path) -> list[tuple[str, str, str]]:
    """(where, kind, body) of a page's python and sh blocks, in the page's order."""
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        if m.group(2) in ("python", "sh"):
            body = "\n".join(line[len(m.group(1)) :] for line in m.group(3).splitlines())
            out.append((f"{page.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}", m.group(2), body))
    return out


@pytest.mark.parametrize("page", [p for p in PAGES if page_blocks(p)], ids=lambda p: p.name)
def test_page_snippets_run(project, ray_cluster, page):
    """A page's blocks in order (a later one uses what an earlier one made): python blocks run
    whole, sh blocks line by line, JOB_ID standing for the zoo's best network and NEW_JOB_ID for
    the one `tans finetune` made from it."""
    store = open_store(str(project / "demo" / "zoo"))
    ids = {"JOB_ID": max(read_results(store), key=lambda r: r.accuracy).job_id}
    for where, kind, body in page_blocks(page):
        if kind == "python":
            r = run_in(project, [sys.executable, "-c", body], ray_cluster.address_info["gcs_address"])
            assert r.returncode == 0, f"{where}:\n{body}\n{r.stderr[-3000:]}"
            continue
        for line in sh_lines(body):
            for name, value in ids.items():
                line = re.sub(rf"\b{name}\b", value, line)
            if line.startswith(PARSED_ONLY):
                if line.startswith("tans "):
                    parser().parse_args(shlex.split(line)[1:])  # flags as the command line reads them
                continue
            assert line.startswith("tans "), f"{where}: a shell line this test does not know: {line}"
            before = {r.job_id for r in read_results(store)}
            r = run_in(project, shlex.split(line), ray_cluster.address_info["gcs_address"])
            assert r.returncode == 0, f"{where}: {line}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
            if line.startswith("tans finetune"):
                (ids["NEW_JOB_ID"],) = {r.job_id for r in read_results(store)} - before


def sh_lines(body: str) -> list[str]:
    lines = (line.split(" #")[0].strip() for line in body.replace("\\\n", " ").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize("where, text", blocks("toml"), ids=[w for w, _ in blocks("toml")])
def test_toml_snippet_is_a_valid_config(tmp_path, where, text):
    path = tmp_path / "build.toml"
    path.write_text(text)
    load_config(str(path), environ={})
