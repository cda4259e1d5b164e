"""Shared fixtures: the real MedMNIST files and tiny-profile configs in temporary folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "medmnist"
if not os.environ.get("MEDDISTILL_DATA") and SHARED.is_dir():
    os.environ["MEDDISTILL_DATA"] = str(SHARED)
if os.environ.get("MEDDISTILL_DATA"):  # CI sets it relative; several tests chdir elsewhere
    os.environ["MEDDISTILL_DATA"] = str(Path(os.environ["MEDDISTILL_DATA"]).resolve())

DATA = Path(os.environ.get("MEDDISTILL_DATA", str(SHARED)))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "breastmnist.npz").is_file():
        pytest.fail(f"real MedMNIST files are required: set MEDDISTILL_DATA (looked in {DATA})")
    return DATA


@pytest.fixture(scope="session")
def breast(data_dir):
    from meddistill.data import load_dataset

    return load_dataset("breastmnist", data_root=data_dir, download_ok=False)


@pytest.fixture(scope="session")
def retina(data_dir):
    from meddistill.data import load_dataset

    return load_dataset("retinamnist", data_root=data_dir, download_ok=False)


@pytest.fixture(scope="session")
def session_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("md")
    return {"experts": root / "experts", "runs": root / "runs"}


def tiny_config(dataset: str = "breastmnist", out: Path | None = None, experts: Path | None = None, **flags):
    from meddistill.build import build_config

    base = {"dataset": dataset, "device": "cpu"}
    if out is not None:
        base["out_dir"] = str(out)
    if experts is not None:
        base["experts_dir"] = str(experts)
    base.update(flags)
    return build_config("tiny", **base)


@pytest.fixture
def tiny(session_dirs):
    """Factory for tiny configs sharing a session expert cache."""

    def make(dataset: str = "breastmnist", **flags):
        return tiny_config(dataset, session_dirs["runs"], session_dirs["experts"], **flags)

    return make


def distill_ctx(ds, cfg, run_dir: Path, stop_at: int | None = None):
    """A DistillContext on the CPU for ``cfg`` in ``run_dir`` (created), as the pipeline makes it."""
    import torch

    from meddistill.distill import DistillContext
    from meddistill.identity import distill_identity
    from meddistill.utils import config_hash

    run_dir.mkdir(parents=True, exist_ok=True)
    return DistillContext(ds, cfg, torch.device("cpu"), run_dir, False, config_hash(distill_identity(cfg)), stop_at)


def _script_importer(monkeypatch, folder: str):
    """Import a script of ``folder`` (benchmarks/ or tools/) by name (scripts import their
    siblings by name too); every module of that folder imported meanwhile is dropped afterwards,
    so no test sees another's."""
    import importlib
    import sys

    where = Path(__file__).resolve().parents[1] / folder
    monkeypatch.syspath_prepend(str(where))
    before = set(sys.modules)
    yield importlib.import_module
    for name in set(sys.modules) - before:
        if Path(getattr(sys.modules[name], "__file__", None) or "").parent == where:
            sys.modules.pop(name, None)


@pytest.fixture
def bench_script(monkeypatch):
    """Import a script of benchmarks/ by name."""
    yield from _script_importer(monkeypatch, "benchmarks")


@pytest.fixture
def tool_script(monkeypatch):
    """Import a script of tools/ by name."""
    yield from _script_importer(monkeypatch, "tools")
