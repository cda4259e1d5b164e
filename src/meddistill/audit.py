"""Privacy audit of a synthetic set, as a data-protection review would read it.

- **Traceability.** Each synthetic image records the train images it was initialised or
  re-initialised from (``meta["sources"]``, :mod:`meddistill.distill.init`; DOM's
  replacements too). For each image with sources: the rank of its best-ranked source among
  all train images of its class, by SSIM (pixels in [0, 1]) and by cosine in the features of
  a net the distillation never used (:func:`meddistill.stats.feature_net`, trained on the real
  train split with its own seed). An image is *traced* when a source is rank 1. Under the null
  of a set unrelated to its sources, image i is traced with probability |S_i| / n_class; the
  set traces *at chance* when the count traced is not significant at ``ALPHA`` (a one-sided
  Poisson tail with that mean). An image without sources cannot be traced.
- **Closeness, calibrated.** Each synthetic image's highest SSIM and highest feature cosine to
  any train image, against the same statistic for real *test* images — unrelated patients —
  (:func:`closeness_reference`, a seeded sample of at most ``REF_MAX``, less the test images
  that are a train image stored twice, :func:`duplicates_of`): each image's percentile in that
  distribution, and a flag above the ``percentile`` (99th by default).
- **Shareable** = traces at chance and no image flagged. ``export`` refuses other sets.
- **Loss-attack screen** (cheap, weak): a net trained on the set with the evaluation
  protocol; its loss separates train from test images (AUC). All train images count as
  members, so a leak of a few images barely moves it: a screen, not a measurement.
- **LiRA** (optional, ``--shadows K``; :mod:`meddistill.lira`): the strong attack.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from meddistill.config import RunConfig
from meddistill.data.loader import MedDataset
from meddistill.errors import ConfigError
from meddistill.metrics import binary_auc
from meddistill.stats import embed, feature_net, stats_net_dir
from meddistill.synset import SynSet
from meddistill.utils import atomic_path, derive_seed, resolve_device, write_text_atomic

AUDIT_FILE = "audit.json"
AUDIT_FORMAT = 2  # bump when a definition changes; export refuses an audit of another format
ALPHA = 0.01  # significance of "traced above chance"
REF_MAX = 1000  # test images in the closeness reference
PERCENTILE = 99.0


def _gauss(size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim_matrix(a: torch.Tensor, b: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """SSIM (Gaussian window 7, σ 1.5, channels averaged) of every a[i] against every b[j]; pixels in [0, 1]."""
    c1, c2 = 0.01**2, 0.03**2
    win = _gauss()
    ch = a.shape[1]
    w = win.repeat(ch, 1, 1, 1)

    def stats(x):
        mu = F.conv2d(x, w, groups=ch)
        sq = F.conv2d(x * x, w, groups=ch) - mu**2
        return mu, sq

    mu_a, var_a = stats(a)
    out = torch.empty(a.shape[0], b.shape[0])
    for j in range(0, b.shape[0], chunk):
        bb = b[j : j + chunk]
        mu_b, var_b = stats(bb)
        for i in range(a.shape[0]):
            ai = a[i : i + 1]
            mu_ab = F.conv2d(ai * bb, w, groups=ch)
            cov = mu_ab - mu_a[i : i + 1] * mu_b
            num = (2 * mu_a[i : i + 1] * mu_b + c1) * (2 * cov + c2)
            den = (mu_a[i : i + 1] ** 2 + mu_b**2 + c1) * (var_a[i : i + 1] + var_b + c2)
            out[i, j : j + chunk] = (num / den).mean(dim=(1, 2, 3))
    return out


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.flatten(1).float(), dim=1)


@dataclass
class Views:
    """A set's similarity to every train image: SSIM (pixels) and cosine (feature net)."""

    ssim: torch.Tensor  # (n, n_train)
    cos: torch.Tensor  # (n, n_train)


def similarities(px: torch.Tensor, feats: torch.Tensor, px_train: torch.Tensor, f_train: torch.Tensor) -> Views:
    return Views(ssim_matrix(px, px_train), _unit(feats) @ _unit(f_train).T)


def source_ranks(sim: torch.Tensor, labels: torch.Tensor, train_labels: torch.Tensor, sources) -> list[int | None]:
    """Per image, the best rank (1 = most similar) of its sources among the train images of its
    class; ties count in the source's favour. None for an image without sources."""
    ranks: list[int | None] = []
    for i, src in enumerate(sources):
        if not src:
            ranks.append(None)
            continue
        row = sim[i]
        cls = row[train_labels == labels[i]]
        ranks.append(min(1 + int((cls > row[int(s)]).sum()) for s in src))
    return ranks


def poisson_tail(k: int, lam: float) -> float:
    """P(X >= k) for X ~ Poisson(lam), its terms summed in log space (any k)."""
    if k <= 0:
        return 1.0
    if lam <= 0:
        return 0.0
    below = sum(math.exp(-lam + j * math.log(lam) - math.lgamma(j + 1)) for j in range(k))
    return min(1.0, max(0.0, 1.0 - below))


def traceability(ranks: list[int | None], labels: torch.Tensor, train_labels: torch.Tensor, sources) -> dict:
    """Traced fraction at rank 1, median rank, their chance levels and the one-sided p-value."""
    with_src = [i for i, r in enumerate(ranks) if r is not None]
    sizes = [int((train_labels == labels[i]).sum()) for i in with_src]
    traced = [i for i in with_src if ranks[i] == 1]
    lam = sum(min(1.0, len(set(sources[i])) / n) for i, n in zip(with_src, sizes, strict=True))
    p = poisson_tail(len(traced), lam)
    return {
        "n_with_sources": len(with_src),
        "traced": traced,
        "traced_fraction": len(traced) / len(ranks) if ranks else 0.0,
        "chance_fraction": lam / len(ranks) if ranks else 0.0,
        "median_rank": float(np.median([ranks[i] for i in with_src])) if with_src else None,
        "chance_median_rank": float(np.median([(n + 1) / 2 for n in sizes])) if sizes else None,
        "p_value": p,
        "at_chance": p >= ALPHA,
    }


def duplicates_of(px: torch.Tensor, px_train: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Which of ``px`` equal some train image up to one grey level in every pixel: the same
    image stored in two splits (MedMNIST has such), not an unrelated patient."""
    flat_train = px_train.flatten(1)
    out = []
    for i in range(0, len(px), chunk):
        d = torch.cdist(px[i : i + chunk].flatten(1), flat_train, p=float("inf"))
        out.append((d <= 1.0 / 255 + 1e-6).any(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def _ref_path(cfg: RunConfig, n: int) -> Path:
    return stats_net_dir(cfg) / f"closeness_ref_{n}.json"


def closeness_reference(
    ds: MedDataset, cfg: RunConfig, net: torch.nn.Module, f_train: torch.Tensor, device, n: int = REF_MAX
) -> dict[str, list[float]]:
    """Highest SSIM and feature cosine to the train split of a seeded sample of at most ``n``
    test images (unrelated patients); cached beside the feature net."""
    n = min(n, len(ds.test))
    path = _ref_path(cfg, n)
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            if len(saved["ssim"]) == len(saved["cos"]) == n - saved["excluded_duplicates"]:
                return saved
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            pass  # unreadable cache: recompute
    g = torch.Generator().manual_seed(derive_seed(cfg.experts.seed, "closeness-ref"))
    idx = torch.randperm(len(ds.test), generator=g)[:n].sort().values
    px_train = ds.denormalize(ds.train.images).clamp(0, 1)
    dup = duplicates_of(ds.denormalize(ds.test.images[idx]).clamp(0, 1), px_train)
    idx = idx[~dup]
    x = ds.test.images[idx]
    views = similarities(ds.denormalize(x).clamp(0, 1), embed(net, x, device), px_train, f_train)
    out = {
        "test_indices": idx.tolist(),
        "excluded_duplicates": int(dup.sum()),
        "ssim": views.ssim.max(1).values.tolist(),
        "cos": views.cos.max(1).values.tolist(),
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(out))
    return out


def _percentiles(values: torch.Tensor, ref: list[float]) -> list[float]:
    r = torch.tensor(ref, dtype=torch.float64)
    return [100.0 * float((r < v).double().mean()) for v in values.double()]


def _check_percentile(percentile: float) -> None:
    if not 0.0 < percentile < 100.0:
        raise ConfigError(f"the closeness percentile must be between 0 and 100, got {percentile}")


def closeness(views: Views, ref: dict[str, list[float]], percentile: float = PERCENTILE) -> dict:
    """Each image's highest SSIM / cosine to the train split, its percentile among the test
    images' and the images above the reference's ``percentile``."""
    _check_percentile(percentile)
    out: dict = {
        "percentile": percentile,
        "n_reference": len(ref["ssim"]),
        "excluded_duplicates": ref.get("excluded_duplicates", 0),
    }
    flagged: set[int] = set()
    for key, sim in (("ssim", views.ssim), ("cos", views.cos)):
        best = sim.max(1).values
        limit = float(np.percentile(np.asarray(ref[key]), percentile))
        above = [int(i) for i in torch.nonzero(best > limit).view(-1)]
        flagged.update(above)
        out[key] = {
            "max": best.tolist(),
            "nearest": sim.argmax(1).tolist(),
            "percentile_of_test": _percentiles(best, ref[key]),
            "limit": limit,
            "above": above,
            "reference_median": float(np.median(ref[key])),
        }
    out["flagged"] = sorted(flagged)
    return out


def loss_screen(syn: SynSet, ds: MedDataset, cfg: RunConfig, device, n: int = 500) -> dict:
    """Loss-threshold attack (members: train, non-members: test) on a net trained on the synthetic
    set with the evaluation protocol (:func:`~meddistill.evaluate.train_and_select`: its epochs,
    lr schedule, DSA, and the checkpoint chosen on validation). A cheap screen only."""
    from meddistill.evaluate import train_and_select
    from meddistill.nets import NetSpec, create_model

    lr = cfg.eval.lr if cfg.eval.lr > 0 else (syn.lr or cfg.eval.lr_default)
    seed = derive_seed(cfg.seed, "audit-mia")
    _, state = train_and_select(syn.images, syn.targets(), ds, cfg, cfg.net.name, seed, lr, cfg.eval.epochs, device)
    net = create_model(NetSpec(**cfg.net.to_dict()), ds.shape, ds.num_classes).to(device)
    net.load_state_dict(state)
    net.eval()
    n = min(n, len(ds.train), len(ds.test))  # balanced members / non-members
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, "audit-sample"))
    mi = torch.randperm(len(ds.train), generator=g)[:n]
    ni = torch.randperm(len(ds.test), generator=g)[:n]
    with torch.no_grad():
        lm = F.cross_entropy(net(ds.train.images[mi].to(device)), ds.train.labels[mi].to(device), reduction="none")
        ln = F.cross_entropy(net(ds.test.images[ni].to(device)), ds.test.labels[ni].to(device), reduction="none")
    scores = torch.cat([-lm, -ln]).cpu().numpy()
    member = np.r_[np.ones(len(mi), bool), np.zeros(len(ni), bool)]
    return {"auc": binary_auc(member, scores), "members": len(mi), "nonmembers": len(ni), "kind": "loss screen"}


@dataclass
class AuditReport:
    n_synthetic: int
    init: str | None
    sources_recorded: bool
    traceability: dict
    closeness: dict
    shareable: bool
    synset_hash: str
    feature_net: str
    loss_screen: dict | None = None
    lira: dict | None = None
    seconds: dict = field(default_factory=dict)
    format: int = AUDIT_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def summary(self) -> dict:
        """The headline figures (a benchmark row's ``privacy`` block)."""
        t, c = self.traceability, self.closeness
        out = {
            "init": self.init,
            "shareable": self.shareable,
            "traced_ssim": len(t["ssim"]["traced"]),
            "traced_cos": len(t["cos"]["traced"]),
            "at_chance": t["at_chance"],
            "median_rank_ssim": t["ssim"]["median_rank"],
            "chance_median_rank": t["ssim"]["chance_median_rank"],
            "flagged": len(c["flagged"]),
            "max_ssim": max(c["ssim"]["max"]) if c["ssim"]["max"] else None,
            "max_ssim_percentile": max(c["ssim"]["percentile_of_test"], default=None),
            "max_cos_percentile": max(c["cos"]["percentile_of_test"], default=None),
            "n_synthetic": self.n_synthetic,
        }
        if self.loss_screen is not None:
            out["loss_screen_auc"] = self.loss_screen["auc"]
        if self.lira is not None:
            out["lira"] = self.lira["headline"]
        return out


def lira_headline(result: dict) -> dict:
    """The figures a reader wants from :meth:`meddistill.lira.LiraResult.to_dict`: offline LiRA
    (the variant that finds copies in distilled sets, docs/privacy.md) over all train images and
    over the source images, and what it cost."""
    off, src = result["offline"], result["offline_sources"]
    return {
        "variant": "offline",
        "shadows": result["shadows"],
        "auc": off["auc"],
        "tpr_at_0.1pct": off["tpr_at_fpr_0_1pct"],
        "tpr_at_1pct": off["tpr_at_fpr_1pct"],
        "sources_auc": src["auc"] if isinstance(src, dict) else None,
        "sources_tpr_at_1pct": src["tpr_at_fpr_1pct"] if isinstance(src, dict) else None,
        "seconds": result["total_seconds"],
    }


def run_lira_audit(cfg: RunConfig, ds: MedDataset, device, shadows: int, run_dir: Path, progress: bool) -> dict:
    """LiRA with ``shadows`` shadow runs of the run's pipeline in ``<run_dir>/lira_k<K>/``
    (resumable): the full result plus its ``headline``."""
    from meddistill.lira import run_lira

    result = run_lira(cfg, ds, device, shadows, Path(run_dir) / f"lira_k{shadows}", progress).to_dict()
    return {**result, "headline": lira_headline(result)}


def _sources(syn: SynSet) -> tuple[list[list[int]], bool]:
    src = syn.meta.get("sources")
    if isinstance(src, list) and len(src) == len(syn.labels):
        return [[int(i) for i in s] for s in src], True
    return [[] for _ in range(len(syn.labels))], False


def audit(
    syn: SynSet,
    ds: MedDataset,
    cfg: RunConfig,
    device,
    percentile: float = PERCENTILE,
    screen: bool = True,
    progress: bool = False,
) -> AuditReport:
    """Traceability and calibrated closeness of ``syn`` (and the loss screen with ``screen``)."""
    return _audit(syn, ds, cfg, device, percentile, screen, progress)[0]


def _audit(
    syn: SynSet, ds: MedDataset, cfg: RunConfig, device, percentile: float, screen: bool, progress: bool
) -> tuple[AuditReport, Views]:
    """:func:`audit`, and the set's similarities to the train split it measured (the figure's)."""
    _check_percentile(percentile)
    secs: dict[str, float] = {}
    t0 = time.monotonic()
    net = feature_net(ds, cfg, device, progress)
    f_train = embed(net, ds.train.images, device)
    secs["feature_net"] = round(time.monotonic() - t0, 2)
    t0 = time.monotonic()
    ref = closeness_reference(ds, cfg, net, f_train, device)
    secs["reference"] = round(time.monotonic() - t0, 2)
    t0 = time.monotonic()
    px_train = ds.denormalize(ds.train.images).clamp(0, 1)
    views = similarities(syn.pixels(), embed(net, syn.images, device), px_train, f_train)
    sources, recorded = _sources(syn)
    labels, train_labels = syn.labels.long(), ds.train.labels.view(-1).long()
    trace: dict = {}
    for key, sim in (("ssim", views.ssim), ("cos", views.cos)):
        ranks = source_ranks(sim, labels, train_labels, sources)
        trace[key] = {**traceability(ranks, labels, train_labels, sources), "ranks": ranks}
    trace["at_chance"] = recorded and trace["ssim"]["at_chance"] and trace["cos"]["at_chance"]
    close = closeness(views, ref, percentile)
    secs["set"] = round(time.monotonic() - t0, 2)
    screen_out = None
    if screen:
        t0 = time.monotonic()
        screen_out = loss_screen(syn, ds, cfg, device)
        secs["loss_screen"] = round(time.monotonic() - t0, 2)
    rep = AuditReport(
        n_synthetic=len(syn.labels),
        init=syn.meta.get("init"),
        sources_recorded=recorded,
        traceability=trace,
        closeness=close,
        shareable=bool(trace["at_chance"] and not close["flagged"]),
        synset_hash=syn.content_hash(),
        feature_net=stats_net_dir(cfg).name,
        loss_screen=screen_out,
        seconds=secs,
    )
    return rep, views


def audit_figure(
    syn: SynSet, ds: MedDataset, near_ssim: torch.Tensor, path: Path, k: int = 3, per_page: int = 25
) -> list[Path]:
    """Every synthetic image (left) beside its k nearest real training images by SSIM.

    Pages of ``per_page`` rows: ``audit.png``, then ``audit_2.png``, ``audit_3.png`` ...
    """
    from meddistill.plots import plt

    top = near_ssim.topk(k, dim=1)
    px_syn, px_real = syn.pixels(), ds.denormalize(ds.train.images).clamp(0, 1)

    def show(ax, im, title):
        arr = im.permute(1, 2, 0).numpy()
        ax.imshow(arr.squeeze(-1) if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=6)
        ax.axis("off")

    paths = []
    n = len(syn.labels)
    for page, first in enumerate(range(0, n, per_page), start=1):
        rows = list(range(first, min(n, first + per_page)))
        fig, axes = plt.subplots(len(rows), k + 1, figsize=(1.3 * (k + 1), 1.3 * len(rows)), dpi=110, squeeze=False)
        for a, r in enumerate(rows):
            show(axes[a][0], px_syn[r], f"syn {r} (c{int(syn.labels[r])})")
            for j in range(k):
                idx = int(top.indices[r, j])
                show(axes[a][j + 1], px_real[idx], f"real {idx} ssim {float(top.values[r, j]):.2f}")
        fig.tight_layout()
        out = path if page == 1 else path.with_name(f"{path.stem}_{page}{path.suffix}")
        fig.savefig(out)
        plt.close(fig)
        paths.append(out)
    return paths


def run_audit(
    run_dir: Path,
    syn: SynSet,
    ds: MedDataset,
    cfg: RunConfig,
    device,
    percentile: float = PERCENTILE,
    screen: bool = True,
    progress: bool = False,
    lira: dict | None = None,
) -> AuditReport:
    """:func:`audit` of a run folder's set; writes ``audit.json`` and ``audit.png`` there."""
    rep, views = _audit(syn, ds, cfg, device, percentile, screen, progress)
    rep.lira = lira
    write_text_atomic(run_dir / AUDIT_FILE, rep.to_json())
    audit_figure(syn, ds, views.ssim, run_dir / "audit.png")  # the SSIM matrix the audit measured
    return rep


def run_privacy(cfg: RunConfig, run_dir: Path, syn: SynSet, ds: MedDataset, progress: bool = False) -> dict:
    """A benchmark row's ``privacy`` block: the summary of the run folder's audit of this very
    set, audited now (traceability and closeness, no attack) when there is none."""
    old = read_audit(run_dir)
    same = old is not None and old.get("synset_hash") == syn.content_hash()
    if same and old.get("feature_net") == stats_net_dir(cfg).name and old["closeness"]["percentile"] == PERCENTILE:
        return AuditReport(**old).summary()
    rep = audit(syn, ds, cfg, resolve_device(cfg.device), screen=False, progress=progress)
    write_text_atomic(Path(run_dir) / AUDIT_FILE, rep.to_json())
    return rep.summary()


def read_audit(run_dir: Path) -> dict | None:
    """A run folder's ``audit.json`` of the current format, or None."""
    path = Path(run_dir) / AUDIT_FILE
    try:
        out = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return out if isinstance(out, dict) and out.get("format") == AUDIT_FORMAT else None


def summary_line(rep: AuditReport) -> str:
    s = rep.summary()
    t = rep.traceability
    trace = "n/a (no recorded sources)" if not rep.sources_recorded else (
        f"{s['traced_ssim']}/{rep.n_synthetic} traced to their source by SSIM, {s['traced_cos']} by features "
        f"(p={t['ssim']['p_value']:.2g}/{t['cos']['p_value']:.2g}; {'at' if t['at_chance'] else 'ABOVE'} chance)"
    )
    line = (
        f"{'shareable' if rep.shareable else 'NOT shareable'}: {trace}; {s['flagged']} image(s) closer to a train "
        f"image than {rep.closeness['percentile']:g}% of test images are (highest SSIM {s['max_ssim']:.3f})"
    )
    if rep.loss_screen is not None:
        line += f"; loss-attack screen AUC {rep.loss_screen['auc']:.3f}"
    if rep.lira is not None:
        h = rep.lira["headline"]
        line += (
            f"; LiRA ({h['shadows']} shadows, offline) AUC {h['auc']:.3f}, TPR {100 * h['tpr_at_0.1pct']:.2f} % "
            f"at 0.1 % FPR"
        )
    return line
