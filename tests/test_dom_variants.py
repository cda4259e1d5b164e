"""PTM's DOM after its rejected variants were removed (issue 37; the variants and their study
are at the commit docs/results/dom-variants.md names): its identity is the one runs were stored
under, a removed option is an unknown key, an engine run step by step replaces exactly the
images the threshold rule selects by unused real images of their class, a run with DOM events
resumes bit for bit, and PTM at the default settings reproduces the sets pinned before the
variants existed."""

from __future__ import annotations

import platform

import pytest
import torch
import torch.nn.functional as F

from meddistill.build import build_config
from meddistill.distill import get_method
from meddistill.distill.dom import DOMConfig
from meddistill.distill.methods_tm import PTMConfig, build_engine
from meddistill.errors import ConfigError, RunStopped
from meddistill.identity import distill_identity, identity_dict
from meddistill.nets import call_flat
from meddistill.utils import config_hash, read_jsonl
from tests.conftest import distill_ctx as _ctx
from tests.conftest import tiny_config

D = "distill.ptm.dom."
# the variant options removed with their study (at the tag docs/results/dom-variants.md names)
REMOVED = ("when", "space", "gradient_threshold", "rule", "rate", "reinit", "retrain", "retrain_boost")
REMOVED += ("retrain_window",)


def test_the_identity_is_the_one_stored_runs_have():
    original = {"enabled", "every", "start", "stop", "pixel_threshold", "feature_threshold", "max_replace_frac"}
    original.add("noise")
    assert set(identity_dict(DOMConfig(feature_epoch="last"))) == original
    # the reference epoch, now ``read``, is the one option that enters the identity
    assert set(identity_dict(PTMConfig())["dom"]) == original | {"feature_epoch"}
    # the run identities of PTM at default settings are those computed before the options existed
    # (cpu: with the student steps and span it had then, they are ``auto`` now; cpu and paper:
    # with the bf16 experts ``experts.bf16: auto`` chose on the bf16-native CPU they were pinned on)
    pinned = {"tiny": "6ca0a8b20000", "cpu": "421428a655ff", "paper": "9f17891f5b5e"}
    then = {
        "cpu": ["method.syn_steps=10", "method.expert_epochs=2", "experts.bf16=true"],
        "paper": ["experts.bf16=true"],
    }
    for profile, key in pinned.items():
        ov = [*then.get(profile, []), "method.dom.feature_epoch=last", "method.init=real"]  # the start they had
        cfg = build_config(profile, None, ov, dataset="pneumoniamnist", device="cpu", **{"distill.ipc": 10})
        assert cfg.distill.method == "ptm" and config_hash(distill_identity(cfg)) == key, profile


@pytest.mark.parametrize("key", REMOVED)
def test_a_removed_variant_option_is_an_unknown_key(key):
    with pytest.raises(ConfigError, match=rf"^unknown config key '{D}{key}'; valid keys here: enabled, every, "):
        build_config("tiny", overrides=["distill.ptm.init=real", f"{D}{key}=1"])
    assert not hasattr(DOMConfig(), key)


# -------------------------------------------------------------------- engine, step by step


def _expected_selection(tm, st, budget: int) -> dict[int, list[int]]:
    """Per class, the positions the threshold rule must replace, computed here from scratch:
    pixel and reference-expert feature cosine, a pair flagged when over either threshold; while
    a flagged pair is left, the image in the most flagged pairs goes (ties: the later position)."""
    dc = tm.dom
    x = st.images.detach()
    feats = call_flat(tm.net, tm.spec, tm.buffer.get(0)[tm.dom_epoch], x, features=True)
    out = {}
    for c in range(int(st.labels.max()) + 1):
        ids = torch.nonzero(st.labels == c).view(-1).tolist()
        sim = {}
        for name, v in (("pixel", x), ("feature", feats)):
            z = F.normalize(v[ids].flatten(1), dim=1)
            sim[name] = z @ z.T
        n = len(ids)
        flagged = {
            (a, b)
            for a in range(n)
            for b in range(n)
            if a != b and (sim["pixel"][a, b] > dc.pixel_threshold or sim["feature"][a, b] > dc.feature_threshold)
        }
        alive, gone = set(range(n)), []
        while len(gone) < budget:
            counts = {a: sum((a, b) in flagged and (b, a) in flagged for b in alive) for a in alive}
            top = max(counts.values())
            if top == 0:
                break
            a = max(i for i, k in counts.items() if k == top)
            gone.append(a)
            alive.discard(a)
        out[c] = [ids[a] for a in gone]
    return out


def test_dom_replaces_exactly_what_the_threshold_rule_selects_by_unused_real_images(breast, tiny, tmp_path):
    # a real start (DOM then re-initialises from real images), every pair over the feature
    # threshold: each event replaces max(1, int(0.5 · 4)) = 2 images per class
    flags = {"distill.ptm.init": "real", "distill.ipc": 4, D + "every": 3, D + "max_replace_frac": 0.5}
    cfg = tiny(**flags, **{D + "feature_threshold": -1.0})
    tm = build_engine(_ctx(breast, cfg, tmp_path / "steps"))
    d = cfg.distill.active
    st = tm.init_state()
    events = []
    while st.it < d.iterations:
        tm.step(st)
        if tm.dom_due(st.it):
            want = _expected_selection(tm, st, budget=2)
            old, used = st.images.detach().clone(), st.used.clone()
            sources = [list(s) for s in st.sources]
            replaced = tm.dom_step(st)
            assert replaced == [p for c in sorted(want) for p in want[c]]
            changed = (st.images.detach() != old).flatten(1).any(1)
            assert torch.nonzero(changed).view(-1).tolist() == sorted(replaced)
            for pos in replaced:
                r = st.sources[pos][-1]  # the new image's train index, appended to the image's sources
                assert st.sources[pos][:-1] == sources[pos] and not bool(used[r]) and bool(st.used[r])
                assert int(breast.train.labels[r]) == int(st.labels[pos])
                assert torch.equal(st.images.detach()[pos], breast.train.images[r])
                assert not st.img_mom[pos].any()
            events.append((st.it, replaced))
    assert [e[0] for e in events] == [3, 6, 9] and all(len(ids) == 4 for _, ids in events)
    # the method run logs the same events and ends at the same set
    syn = get_method("ptm")(_ctx(breast, cfg, tmp_path / "run"))
    logged = [(r["it"] + 1, r["dom_ids"]) for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "dom_ids" in r]
    assert logged == events
    assert torch.equal(syn.images, st.images.detach()) and syn.meta["dom_replaced"] == 12


def test_a_run_with_dom_events_resumes_bit_for_bit(breast, tiny, tmp_path):
    """Stopped between two DOM events of a real start with noisy replacements, resumed."""
    flags = {"distill.ipc": 3, D + "every": 3, D + "feature_threshold": -1.0, D + "noise": 0.1}
    cfg = tiny(**flags, **{"distill.ptm.init": "real"})
    full = get_method("ptm")(_ctx(breast, cfg, tmp_path / "full"))
    assert full.meta["dom_replaced"] > 0
    with pytest.raises(RunStopped, match="stopped at iteration 5/12"):
        get_method("ptm")(_ctx(breast, cfg, tmp_path / "cut", stop_at=5))
    resumed = get_method("ptm")(_ctx(breast, cfg, tmp_path / "cut"))
    assert torch.equal(full.images, resumed.images) and full.lr == resumed.lr
    assert full.meta["dom_replaced"] == resumed.meta["dom_replaced"]
    a = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    b = read_jsonl(tmp_path / "cut" / "metrics.jsonl")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r.get("dom_ids") for r in a] == [r.get("dom_ids") for r in b]


# ------------------------------------------------------------------ the defaults, pinned

# Synthetic-set hashes and DOM replacement counts of tiny PTM runs, one torch thread, torch 2.13
# CPU on x86-64 AMD EPYC: with AVX512, computed with the code before the DOM variants existed
# (commit 29a655b, when ``init: real`` was the default start); with AVX2, computed with the code
# just before the variants were removed (commit c5e2e3c), also for today's default start (dm).
# The code must reproduce them bit for bit. Floating-point results depend on the torch build,
# the CPU and the thread count (an Intel Xeon with the same torch gives other bits), so elsewhere
# the test is skipped (recompute them there from those commits).
REAL = {"distill.ptm.init": "real"}
CASES = {
    "default_ipc2": {"distill.ipc": 2, **REAL},
    "dom_fires_ipc4": {"distill.ipc": 4, D + "pixel_threshold": -1.0, **REAL},
    "dom_noise_ipc3": {"distill.ipc": 3, D + "pixel_threshold": -1.0, D + "noise": 0.1, "method.batch_syn": 4, **REAL},
    "dm_start_dom_fires_ipc5": {"distill.ipc": 5, D + "pixel_threshold": -1.0, D + "every": 4},
}
PINNED = {
    ("2.13.0+cpu", "x86_64", "AMD EPYC", "AVX512"): {
        "default_ipc2": ("2edcae42e233bd74", 0),
        "dom_fires_ipc4": ("f89cb43ede8785e1", 6),
        "dom_noise_ipc3": ("3f6b12e3cfc07921", 6),
    },
    ("2.13.0+cpu", "x86_64", "AMD EPYC", "AVX2"): {
        "default_ipc2": ("5e9ab60764ba4e99", 0),
        "dom_fires_ipc4": ("ab3907497a45dac7", 6),
        "dom_noise_ipc3": ("ac39374cf79a79eb", 6),
        "dm_start_dom_fires_ipc5": ("7cf09b35d4557a97", 4),
    },
}


def _this_build() -> tuple[str, str, str, str]:
    from meddistill.utils import machine_info

    cpu = machine_info(torch.device("cpu"))
    vendor = "AMD EPYC" if cpu["cpu"].startswith("AMD EPYC") else cpu["cpu"]
    return torch.__version__, platform.machine(), vendor, cpu["cpu_capability"]


@pytest.mark.skipif(_this_build() not in PINNED, reason="hashes pinned on another build or CPU")
def test_ptm_at_default_dom_settings_is_bit_identical_to_before(breast, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the experts too: trained here, in this thread count
    try:
        for case, (digest, replaced) in PINNED[_this_build()].items():
            cfg = tiny_config("breastmnist", tmp_path / "runs", tmp_path / "experts", **CASES[case])
            syn = get_method("ptm")(_ctx(breast, cfg, tmp_path / case))
            assert (syn.content_hash(), syn.meta["dom_replaced"]) == (digest, replaced), case
    finally:
        torch.set_num_threads(threads)
