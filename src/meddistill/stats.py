"""Diversity and coverage of an image set (a synthetic set or a coreset), measured in a feature
space that the distillation never saw.

Feature space: the penultimate features of a net of the run's ``cfg.net`` trained on the full
real train split with the expert training settings (``cfg.experts``: epochs, lr, batch size,
momentum, weight decay, DSA, bf16) but its own seeds (``derive_seed(cfg.experts.seed,
"stats-net")``), so it is none of the experts the methods match or select with. It is cached
like the experts: ``<experts_dir>/<dataset>_<size>/stats-<net tag>-<hash>/net.safetensors`` +
``meta.json``, keyed by the hash of :func:`stats_net_identity`; files are written atomically.

Metrics (the pure functions below take tensors; ``set_stats`` combines them):

- intra-class distance: per class, the mean over pairs i≠j of ``1 − cos(f_i, f_j)``; mean over
  classes with ≥ 2 images; in feature space and, for reference, in pixel space (the flattened
  images in the dataset's normalised space, as DOM measures overlap);
- Vendi score (Friedman & Dieng 2023) per class: ``exp(−Σ λ log λ)`` over the eigenvalues λ of
  ``K/n``, ``K`` the cosine-similarity kernel of the class's n features; in [1, n];
- class coverage: per class c, the share of real train images of class c whose nearest
  synthetic image (cosine) is of class c; mean over classes;
- k-NN precision / recall (Kynkäänniemi et al. 2019), class-conditional, Euclidean distance of
  L2-normalised features: precision = share of a class's synthetic images within the k-NN
  radius of some real image of that class (real radii from real-real k-NN); recall = share of a
  class's real images within the k-NN radius of some synthetic image of that class (synthetic
  radii from synthetic-synthetic k-NN, with k lowered to n − 1 when a class has n ≤ k synthetic
  images, radius 0 when n = 1); means over classes.

The real side is a seeded sample of at most ``real_per_class`` train images per class.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from meddistill import identity
from meddistill.config import RunConfig
from meddistill.data.loader import MedDataset
from meddistill.data.sources import dataset_dir
from meddistill.errors import ArtifactError, ConfigError
from meddistill.experts import expert_plan
from meddistill.nets import create_model
from meddistill.synset import SynSet
from meddistill.train import Diverged, fit, sgd
from meddistill.utils import atomic_path, code_version, config_hash, derive_seed, resolve_device, write_text_atomic

STATS_TAG = "stats-net"
KNN_K = 3
REAL_PER_CLASS = 1000
STATS_FILE = "stats.json"
DIST_TOL = 1e-6  # distances of unit vectors (≤ 2) come from a matmul: an exact copy may sit ~1e-8 away
STATS_FORMAT = 1  # bump when a definition below changes; cached stats.json of another format are recomputed


# ---------------------------------------------------------------------------- pure metrics


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Rows flattened, in float64, scaled to unit L2 norm (a zero row stays zero)."""
    return F.normalize(x.flatten(1).double(), dim=1, eps=1e-12)


def mean_pairwise_cosine_distance(x: torch.Tensor) -> float | None:
    """Mean of ``1 − cos(x_i, x_j)`` over ordered pairs i ≠ j; None for fewer than 2 rows."""
    n = x.shape[0]
    if n < 2:
        return None
    z = _unit(x)
    sim = z @ z.T
    off = sim.sum() - sim.diagonal().sum()
    return float(1.0 - off / (n * (n - 1)))


def vendi_score(x: torch.Tensor) -> float:
    """Vendi score of the rows of ``x`` with the cosine-similarity kernel: exp of the Shannon
    entropy of the eigenvalues of ``K/n`` (normalised to sum 1), clamped to [1, n]."""
    n = x.shape[0]
    if n == 0:
        raise ValueError("the Vendi score of an empty set is undefined")
    z = _unit(x)
    gram = z @ z.T if n <= z.shape[1] else z.T @ z  # same non-zero eigenvalues
    lam = torch.linalg.eigvalsh(gram / n).clamp(min=0)
    if float(lam.sum()) <= 0:
        return 1.0  # every row is zero: one "image"
    lam = lam / lam.sum()
    lam = lam[lam > 0]
    entropy = float(-(lam * lam.log()).sum())
    return min(float(n), max(1.0, math.exp(entropy)))


def per_class(fn, x: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """``fn`` applied to the rows of each class 0..num_classes-1; None for a class with no rows."""
    return [fn(x[labels == c]) if bool((labels == c).any()) else None for c in range(num_classes)]


def mean_defined(values: list[float | None]) -> float | None:
    """Mean of the values that are not None; None if there are none."""
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def class_coverage(
    real: torch.Tensor, real_labels: torch.Tensor, syn: torch.Tensor, syn_labels: torch.Tensor, num_classes: int
) -> list[float | None]:
    """Per class c: the share of real rows of class c whose most cosine-similar synthetic row is
    of class c (None for a class without real rows; 0 for one without synthetic rows)."""
    nearest = syn_labels[(_unit(real) @ _unit(syn).T).argmax(1)]
    return [
        float((nearest[real_labels == c] == c).double().mean()) if bool((real_labels == c).any()) else None
        for c in range(num_classes)
    ]


def knn_radii(x: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance from each row of ``x`` (L2-normalised) to its k-th nearest other row; k is lowered
    to n − 1 when n ≤ k, and a lone row has radius 0."""
    n = x.shape[0]
    k_eff = min(k, n - 1)
    if k_eff <= 0:
        return torch.zeros(n, dtype=torch.float64)
    z = _unit(x)
    out = []
    for i in range(0, n, chunk):
        d = torch.cdist(z[i : i + chunk], z)
        out.append(d.topk(k_eff + 1, dim=1, largest=False).values[:, k_eff])  # column 0 is the row itself
    return torch.cat(out)


def manifold_hits(points: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """Whether each row of ``points`` lies within ``radii[j]`` of some row ``ref[j]`` (normalised space)."""
    if ref.shape[0] == 0:
        return torch.zeros(points.shape[0], dtype=torch.bool)
    d = torch.cdist(_unit(points), _unit(ref))
    return (d <= radii.view(1, -1) + DIST_TOL).any(1)


def knn_precision_recall(
    real: torch.Tensor,
    real_labels: torch.Tensor,
    syn: torch.Tensor,
    syn_labels: torch.Tensor,
    num_classes: int,
    k: int = KNN_K,
) -> dict[str, list]:
    """Class-conditional k-NN precision and recall (Kynkäänniemi et al. 2019) per class:
    ``precision`` (None for a class without synthetic rows), ``recall`` (None for a class
    without real rows) and ``k_syn``, the k used for the synthetic radii (min(k, n_syn − 1))."""
    precision: list[float | None] = []
    recall: list[float | None] = []
    k_syn: list[int | None] = []
    for c in range(num_classes):
        r, s = real[real_labels == c], syn[syn_labels == c]
        k_syn.append(max(0, min(k, s.shape[0] - 1)) if s.shape[0] else None)
        precision.append(float(manifold_hits(s, r, knn_radii(r, k)).double().mean()) if s.shape[0] else None)
        recall.append(float(manifold_hits(r, s, knn_radii(s, k)).double().mean()) if r.shape[0] else None)
    return {"precision": precision, "recall": recall, "k_syn": k_syn}


# ---------------------------------------------------------------------------- the feature net


def stats_net_identity(cfg: RunConfig) -> dict:
    """What determines the feature net: the expert identity (dataset, size, net spec, expert
    training config but the number of experts, DSA, expert seed) plus its own seed tag."""
    return identity.stats_net_identity(cfg, STATS_TAG)


def stats_net_dir(cfg: RunConfig) -> Path:
    ident = stats_net_identity(cfg)
    return Path(cfg.experts_dir) / dataset_dir(cfg) / f"stats-{cfg.net.tag()}-{config_hash(ident, 8)}"


def _accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    logits = embed(net, x, device, features=False)
    return float((logits.argmax(1) == y).double().mean()) if len(y) else 0.0


def train_stats_net(ds: MedDataset, cfg: RunConfig, device: torch.device, progress: bool = False) -> torch.nn.Module:
    """A fresh ``cfg.net`` trained with :func:`train.fit` on the real train split, with the
    expert training settings and the ``stats-net`` seed tags (the caller's RNG is untouched)."""
    e = cfg.experts
    plan = expert_plan(ds, cfg, (e.seed, STATS_TAG, "order"), (e.seed, STATS_TAG, "dsa"))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(derive_seed(e.seed, STATS_TAG))
        net = create_model(cfg.net, ds.shape, ds.num_classes).to(device)
    with tqdm(total=e.epochs, desc=f"stats net {cfg.dataset}", unit="epoch", disable=not progress) as bar:
        try:
            opt = sgd(net, plan)
            epochs = range(e.epochs)
            fit(net, opt, ds.train.images, ds.train.labels, plan, epochs, device, on_epoch=lambda _e: bar.update(1))
        except Diverged as exc:
            raise ConfigError(f"the stats feature net diverged ({exc}); lower experts.lr") from None
    return net.eval()


def feature_net(ds: MedDataset, cfg: RunConfig, device: torch.device, progress: bool = False) -> torch.nn.Module:
    """The cached feature net of ``cfg`` (trained and saved on first use)."""
    folder = stats_net_dir(cfg)
    path, meta_path = folder / "net.safetensors", folder / "meta.json"
    ident = stats_net_identity(cfg)
    if meta_path.exists() and json.loads(meta_path.read_text()).get("identity") != ident:
        raise ArtifactError(f"{meta_path} describes a different feature net; remove {folder}")
    if path.exists():
        net = create_model(cfg.net, ds.shape, ds.num_classes).to(device)
        try:
            net.load_state_dict(load_file(str(path), device=str(device)))
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise ArtifactError(f"feature net {path} is unreadable ({exc}); delete it to retrain") from None
        return net.eval()
    net = train_stats_net(ds, cfg, device, progress)
    with atomic_path(path) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(tmp), metadata={"format": "meddistill-stats-net-v1"})
    meta = {
        "identity": ident,
        "val_acc": _accuracy(net, ds.val.images, ds.val.labels, device),
        "code_version": code_version(),
        "format": "net.safetensors: state_dict of cfg.net; features = net(x, features=True)",
    }
    write_text_atomic(meta_path, json.dumps(meta, indent=2, sort_keys=True))
    return net


def embed(
    net: torch.nn.Module, x: torch.Tensor, device: torch.device, features: bool = True, bs: int = 512
) -> torch.Tensor:
    """Penultimate features (or logits) of ``net`` for ``x``, in float32 on the CPU."""
    net.eval()
    with torch.no_grad():
        return torch.cat([net(x[i : i + bs].to(device), features=features).float().cpu() for i in range(0, len(x), bs)])


def real_sample(ds: MedDataset, seed: int, per_class: int = REAL_PER_CLASS) -> torch.Tensor:
    """Sorted indices of at most ``per_class`` train images of every class (seeded)."""
    labels = ds.train.labels
    idx = []
    for c in range(ds.num_classes):
        members = torch.nonzero(labels == c).view(-1)
        g = torch.Generator().manual_seed(derive_seed(seed, STATS_TAG, "real-sample", c))
        idx.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    return torch.cat(idx).sort().values


def real_features(
    net: torch.nn.Module, ds: MedDataset, cfg: RunConfig, device: torch.device, per_class: int = REAL_PER_CLASS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of the real sample, cached beside the feature net."""
    path = stats_net_dir(cfg) / f"real_features_{per_class}.safetensors"
    if path.exists():
        try:
            saved = load_file(str(path))
            return saved["features"], saved["labels"]
        except (SafetensorError, OSError, KeyError):
            pass  # unreadable cache: recompute
    idx = real_sample(ds, cfg.experts.seed, per_class)
    feats, labels = embed(net, ds.train.images[idx], device), ds.train.labels[idx].clone()
    with atomic_path(path) as tmp:
        save_file({"features": feats.contiguous(), "labels": labels, "indices": idx.contiguous()}, str(tmp))
    return feats, labels


# ---------------------------------------------------------------------------- entry points


def set_stats(
    syn: SynSet, ds: MedDataset, cfg: RunConfig, device: torch.device, progress: bool = False, k: int = KNN_K
) -> dict:
    """Diversity and coverage of ``syn`` (hard labels ``syn.labels``) against the real train split."""
    net = feature_net(ds, cfg, device, progress)
    fs, ys = embed(net, syn.images, device), syn.labels.long().cpu()
    fr, yr = real_features(net, ds, cfg, device)
    c = ds.num_classes
    counts = [int((ys == i).sum()) for i in range(c)]
    dist_feat = per_class(mean_pairwise_cosine_distance, fs, ys, c)
    dist_pix = per_class(mean_pairwise_cosine_distance, syn.images.cpu(), ys, c)
    vendi = per_class(vendi_score, fs, ys, c)
    vendi_norm = [v / n if v is not None else None for v, n in zip(vendi, counts, strict=True)]
    cover = class_coverage(fr, yr, fs, ys, c)
    pr = knn_precision_recall(fr, yr, fs, ys, c, k)
    return {
        "format": STATS_FORMAT,
        "feature_net": stats_net_dir(cfg).name,
        "n_syn": len(ys),
        "n_real": len(yr),
        "knn_k": k,
        "real_per_class": REAL_PER_CLASS,
        "intra_dist_feat": mean_defined(dist_feat),
        "intra_dist_pixel": mean_defined(dist_pix),
        "vendi": mean_defined(vendi),
        "vendi_norm": mean_defined(vendi_norm),
        "class_coverage": mean_defined(cover),
        "precision": mean_defined(pr["precision"]),
        "recall": mean_defined(pr["recall"]),
        "per_class": {
            "n_syn": counts,
            "intra_dist_feat": dist_feat,
            "intra_dist_pixel": dist_pix,
            "vendi": vendi,
            "class_coverage": cover,
            **{key: pr[key] for key in ("precision", "recall", "k_syn")},
        },
    }


def run_stats(cfg: RunConfig, run_dir: Path, syn: SynSet, ds: MedDataset, progress: bool = False) -> dict:
    """:func:`set_stats` of a run folder's set, cached in ``<run_dir>/stats.json`` (recomputed
    when the feature net, k, the real sample size or the format differ)."""
    path = Path(run_dir) / STATS_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
        want = (STATS_FORMAT, stats_net_dir(cfg).name, KNN_K, REAL_PER_CLASS)
        if tuple(old.get(key) for key in ("format", "feature_net", "knn_k", "real_per_class")) == want:
            return old
    out = set_stats(syn, ds, cfg, resolve_device(cfg.device), progress)
    write_text_atomic(path, json.dumps(out, indent=2, sort_keys=True))
    return out


def summary_line(stats: dict) -> str:
    """One human-readable line of the headline numbers."""

    def f(key: str) -> str:
        v = stats.get(key)
        return "n/a" if v is None else f"{v:.3f}"

    return (
        f"intra-class distance {f('intra_dist_feat')} (pixels {f('intra_dist_pixel')}); Vendi {f('vendi')} "
        f"({f('vendi_norm')} of ipc); class coverage {f('class_coverage')}; "
        f"{stats['knn_k']}-NN precision {f('precision')} recall {f('recall')}"
    )
