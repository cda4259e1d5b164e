"""Where a set starts (distill/init.py): sources recorded for every init, DOM's replacements
recorded as sources and made by the init's own rule, resume keeps them."""

from __future__ import annotations

import json

import pytest
import torch

from meddistill.distill import get_method
from meddistill.distill.init import INITS, InitOptions, clusters_of_at_least, make_start
from meddistill.distill.methods_tm import build_engine
from tests.conftest import distill_ctx


@pytest.mark.parametrize("name", ["real", "noise", "centroid"])
def test_every_start_records_its_sources(breast, tiny, tmp_path, name):
    cfg = tiny(**{"distill.ipc": 4, "method.init": name})
    ctx = distill_ctx(breast, cfg, tmp_path)
    start = make_start(ctx, torch.Generator().manual_seed(0), InitOptions(name, k=5))
    assert start.images.shape == (8, 1, 28, 28) and len(start.sources) == 8
    if name == "real":
        assert all(len(s) == 1 for s in start.sources)
        assert torch.equal(start.images, breast.train.images[[s[0] for s in start.sources]])
    elif name == "noise":
        assert all(s == [] for s in start.sources)
    else:  # each image is the mean of at least k real images of its class
        for img, src, y in zip(start.images, start.sources, start.labels, strict=True):
            assert len(src) >= 5 and len(set(src)) == len(src)
            assert (breast.train.labels[src] == y).all()
            assert torch.allclose(img, breast.train.images[src].mean(0), atol=1e-6)


def test_every_init_but_real_is_shareable():
    assert {n for n, spec in INITS.items() if spec.shareable} == {"noise", "centroid", "dm"}
    assert INITS.get("real").replace is None and all(INITS.get(n).replace for n in ("noise", "centroid", "dm"))


def test_clusters_are_never_smaller_than_the_minimum():
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(40, 5, generator=g), torch.randn(2, 5, generator=g) + 50])  # a tiny far cluster
    groups = clusters_of_at_least(x, 3, 6, torch.Generator().manual_seed(2))
    assert len(groups) == 3 and min(len(gr) for gr in groups) >= 6


def test_a_centroid_start_needs_k_images_per_class(breast, tiny, tmp_path):
    from meddistill.errors import ConfigError

    cfg = tiny(**{"distill.ipc": 2, "method.init": "centroid"})
    ctx = distill_ctx(breast, cfg, tmp_path)
    with pytest.raises(ConfigError, match="needs at least init_k=1000 train images in class 0"):
        make_start(ctx, torch.Generator().manual_seed(0), InitOptions("centroid", k=1000))


def _dom_cfg(tiny, init: str):
    return tiny(
        **{
            "distill.ipc": 3,
            "distill.method": "ptm",
            "method.init": init,
            "method.dom.every": 2,
            "method.dom.start": 0.0,
            "method.dom.pixel_threshold": -1.0,
            "method.dom.feature_threshold": -1.0,
        }
    )


@pytest.mark.parametrize("init", ["real", "noise", "centroid"])
def test_a_dom_reinitialisation_is_recorded_as_a_source_and_follows_the_init(breast, tiny, tmp_path, init):
    cfg = _dom_cfg(tiny, init)
    syn = get_method("ptm")(distill_ctx(breast, cfg, tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    replaced = [i for r in rows for i in r.get("dom_ids", [])]
    assert replaced, "DOM replaced no image: the test would check nothing"
    count = {i: replaced.count(i) for i in set(replaced)}
    sources = syn.meta["sources"]
    assert syn.meta["init"] == init
    for pos, n in count.items():
        per_event = {"real": 1, "noise": 0, "centroid": 5}[init]
        first = len(sources[pos]) - n * per_event
        assert first == {"real": 1, "noise": 0}.get(init, first), sources[pos]
        if init == "centroid":
            assert first >= 5
    if init == "noise":
        assert all(s == [] for s in sources)


def test_sources_survive_an_interrupted_and_resumed_run(breast, tiny, tmp_path):
    cfg = _dom_cfg(tiny, "real")
    whole = get_method("ptm")(distill_ctx(breast, cfg, tmp_path / "a"))
    with pytest.raises(Exception, match="stopped at iteration"):
        build_engine(distill_ctx(breast, cfg, tmp_path / "b", stop_at=5)).run()
    resumed = get_method("ptm")(distill_ctx(breast, cfg, tmp_path / "b"))
    assert torch.equal(whole.images, resumed.images)
    assert whole.meta["sources"] == resumed.meta["sources"] and any(len(s) > 1 for s in whole.meta["sources"])


def test_a_dm_warm_start_has_no_sources_and_moves_away_from_noise(breast, tiny, tmp_path):
    cfg = tiny(**{"distill.ipc": 2, "distill.method": "mtt", "method.init": "dm", "method.init_iterations": 3})
    ctx = distill_ctx(breast, cfg, tmp_path)
    dm = make_start(ctx, torch.Generator().manual_seed(0), InitOptions("dm", iterations=3))
    noise = make_start(ctx, torch.Generator().manual_seed(0), InitOptions("noise"))
    assert all(s == [] for s in dm.sources) and not torch.equal(dm.images, noise.images)
    assert torch.equal(dm.labels, noise.labels)


@pytest.mark.parametrize("setting", ["method.dom.noise=0.5"])
def test_a_real_replacement_setting_with_a_shareable_init_is_refused(setting):
    from meddistill.build import build_config
    from meddistill.errors import ConfigError

    with pytest.raises(ConfigError, match="does not use"):
        build_config("tiny", dataset="breastmnist", overrides=["method.init=noise", setting])
    build_config("tiny", dataset="breastmnist", overrides=["method.init=real", setting])  # applies to a real start


def test_a_centroid_start_marks_its_members_as_taken(breast, tiny, tmp_path):
    """DOM's centroid replacements take unused images first: a kept centroid's members are used."""
    cfg = tiny(**{"distill.ipc": 2, "distill.method": "ptm", "method.init": "centroid"})
    st = build_engine(distill_ctx(breast, cfg, tmp_path)).init_state()
    members = {i for src in st.sources for i in src}
    assert len(members) >= 20 and all(bool(st.used[i]) for i in members)
