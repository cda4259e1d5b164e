"""LiRA membership inference (Carlini et al., "Membership Inference Attacks From First
Principles", IEEE S&P 2022) against a distillation *pipeline* (method + config + dataset).

The attacked thing is what produces a shared set: K shadow runs, shadow k on a seeded half of
the train split (each train image in exactly ``K // 2`` halves, :func:`balanced_halves`), each
running the whole pipeline on its half (experts trained on the half when the method reads
experts, then distillation) and training one net on its synthetic set with the evaluation
protocol (:func:`~meddistill.evaluate.train_and_select`). Each shadow records the logit-scaled
confidence :func:`phi` of its net on every train and test image in ``<work_dir>/shadow_<k>/``
(``phi.npz`` + ``shadow.json``, atomic): a rerun skips finished shadows, and an interrupted
shadow's distillation resumes from the checkpoint in its own run folder.

The attack is evaluated leave-one-out: each shadow in turn is the target (its half = members,
the other train images = non-members), the other K - 1 shadows give each image's IN and OUT
observations of phi. Scores, higher = member:

- online: log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out);
- offline: (phi - mu_out) / s_out, the one-sided test against the OUT Gaussian alone.

Centres are per-image medians. Variances are global (pooled over images, around each image's
median) when fewer than :data:`PER_EXAMPLE_VARIANCE_FROM` other shadows exist, as the paper
advises for few shadows; per image above. Every image uses the same number of IN (and of OUT)
observations (:func:`_first_equal`). AUC and TPR at 0.1 % and 1 % FPR are read off the
ROC of the scores pooled over all targets, over all train images and over the target's
*source* images (the train images its synthetic set was initialised or re-initialised from)
against the same non-members.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from meddistill import identity
from meddistill.config import RunConfig
from meddistill.data.loader import MedDataset, Split, class_indices
from meddistill.errors import ArtifactError, ConfigError
from meddistill.metrics import binary_auc
from meddistill.synset import SynSet
from meddistill.utils import atomic_path, derive_seed, read_json_object, write_text_atomic

PER_EXAMPLE_VARIANCE_FROM = 64  # other shadows needed before per-image variances replace the global one
FPRS = (0.001, 0.01)
FEW_SHADOWS = 16  # below this the figures are noisy
FORMAT = "meddistill-lira-v1"

DistillFn = Callable[[RunConfig, MedDataset], SynSet]


# --- the statistic -------------------------------------------------------------------------


def phi(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logit-scaled confidence log p_y - log sum_{y' != y} p_y', computed from the logits as
    z_y - logsumexp_{y' != y} z_y' (no softmax, so finite for p_y -> 1); float64."""
    z = logits.double()
    y = labels.view(-1, 1)
    z_y = z.gather(1, y).view(-1)
    others = z.scatter(1, y, float("-inf"))
    return z_y - torch.logsumexp(others, dim=1)


# --- the shadows' halves -------------------------------------------------------------------


def balanced_halves(n: int, shadows: int, seed: int) -> np.ndarray:
    """(shadows, n) bool: for each image, ``shadows // 2`` shadows chosen at random hold it."""
    g = torch.Generator().manual_seed(derive_seed(seed, "lira-halves", shadows, n))
    ranks = torch.rand(shadows, n, generator=g).argsort(dim=0).argsort(dim=0)
    return (ranks < shadows // 2).numpy()


def subset_dataset(ds: MedDataset, idx: np.ndarray) -> MedDataset:
    """``ds`` with its train split replaced by the images ``idx`` (val, test and the train
    normalisation kept, so every shadow's phi is computed on the same inputs)."""
    t = torch.from_numpy(np.asarray(idx, dtype=np.int64))
    train = Split(ds.train.images[t], ds.train.labels[t])
    return MedDataset(ds.info, ds.size, train, ds.val, ds.test, ds.mean, ds.std, ds.path)


def check_halves(ds: MedDataset, keep: np.ndarray, ipc: int) -> None:
    """Every half holds at least ``ipc`` images of every class (what the method's ``check_ipc``
    asks), checked for all shadows before any runs."""
    labels = ds.train.labels
    for k, row in enumerate(keep):
        for c, idx in enumerate(class_indices(labels[torch.from_numpy(row)], ds.num_classes)):
            if len(idx) < ipc:
                raise ConfigError(
                    f"LiRA shadow {k}'s half of the train split has {len(idx)} images of class {c} "
                    f"({ds.info.labels[c]!r}), fewer than ipc {ipc}; lower the ipc"
                )


def synset_sources(syn: SynSet) -> list[list[int]] | None:
    """Train indices (in the numbering of the split the set was made from) each synthetic image
    was initialised or re-initialised from: ``meta["sources"]``, else a coreset's
    ``meta["train_indices"]`` (one each); None when the set says nothing."""
    if "sources" in syn.meta:
        return [[int(i) for i in s] for s in syn.meta["sources"]]
    if "train_indices" in syn.meta:
        return [[int(i)] for i in syn.meta["train_indices"]]
    return None


def full_train_sources(sources: list[list[int]] | None, subset: np.ndarray) -> list[int] | None:
    """The distinct source images of one shadow, mapped from its half's numbering to the full
    train split's; None when the set records no sources."""
    if sources is None:
        return None
    return sorted({int(subset[i]) for s in sources for i in s})


# --- the attack ----------------------------------------------------------------------------


def _centre_and_spread(obs: np.ndarray, mask: np.ndarray, global_variance: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-image median of the observations ``obs[mask]`` (column-wise) and their spread: the
    pooled residual std over images (global) or each image's own std. An image without
    observations takes the median over all observations; a spread never falls below 1e-6."""
    data = np.where(mask, obs, np.nan)
    counts = mask.sum(0)
    everything = obs[mask]
    fallback = float(np.median(everything)) if everything.size else 0.0
    with warnings.catch_warnings():  # an image without observations: an all-NaN column
        warnings.simplefilter("ignore", RuntimeWarning)
        centre = np.nanmedian(data, axis=0)
    centre = np.where(counts > 0, centre, fallback)
    resid = np.where(mask, obs - centre, 0.0)
    pooled_dof = float(np.sum(np.maximum(counts - 1, 0)))
    if pooled_dof > 0:
        glob = math.sqrt(float(np.sum(resid**2)) / pooled_dof)
    else:  # one observation per image: the spread of all observations
        glob = float(np.std(everything)) if everything.size else 1.0
    if global_variance:
        spread = np.full(obs.shape[1], glob)
    else:
        own = np.sqrt(np.sum(resid**2, axis=0) / np.maximum(counts - 1, 1))
        spread = np.where(counts >= 2, own, glob)
    return centre, np.maximum(spread, 1e-6)


def _log_normal(x: np.ndarray, mu: np.ndarray, s: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mu) / s) ** 2 - np.log(s) - 0.5 * math.log(2 * math.pi)


def _first_equal(mask: np.ndarray) -> np.ndarray:
    """``mask`` (shadows, images) keeping, per image, only its first m observations, m the
    fewest any image has. Leaving the target out gives its members one IN observation fewer
    than its non-members (and one OUT more); unequal counts would make the estimates of
    members and non-members differ in precision, which the scores would read as a signal."""
    m = int(mask.sum(0).min()) if mask.size else 0
    return mask & (np.cumsum(mask, axis=0) <= m)


def target_scores(phis: np.ndarray, keep: np.ndarray, target: int, global_variance: bool) -> dict[str, np.ndarray]:
    """Online and offline LiRA scores (higher = member) of every train image against shadow
    ``target``'s net, from the other shadows' observations."""
    others = np.arange(len(phis)) != target
    obs, kin = phis[others], keep[others]
    mu_in, s_in = _centre_and_spread(obs, _first_equal(kin), global_variance)
    mu_out, s_out = _centre_and_spread(obs, _first_equal(~kin), global_variance)
    x = phis[target]
    return {
        "online": _log_normal(x, mu_in, s_in) - _log_normal(x, mu_out, s_out),
        "offline": (x - mu_out) / s_out,
    }


def tpr_at_fpr(member: np.ndarray, score: np.ndarray, fpr: float) -> float:
    """The highest TPR of the ROC (thresholds at each distinct score, ties together) among its
    points with FPR <= ``fpr``; NaN without members or non-members."""
    member = np.asarray(member, bool)
    score = np.asarray(score, np.float64)
    n_pos, n_neg = int(member.sum()), int((~member).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(-score, kind="mergesort")
    s, m = score[order], member[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last index of each tied group
    tp, fp = np.cumsum(m)[last], np.cumsum(~m)[last]
    ok = fp / n_neg <= fpr
    return float(tp[ok].max() / n_pos) if ok.any() else 0.0


@dataclass
class AttackMetrics:
    auc: float
    tpr_at_fpr_0_1pct: float
    tpr_at_fpr_1pct: float
    n_members: int
    n_nonmembers: int

    @classmethod
    def of(cls, member: np.ndarray, score: np.ndarray) -> AttackMetrics:
        lo, hi = FPRS
        n_pos = int(np.sum(member))
        auc = binary_auc(member, score)
        return cls(auc, tpr_at_fpr(member, score, lo), tpr_at_fpr(member, score, hi), n_pos, len(member) - n_pos)


def lira_attack(
    phis: np.ndarray,
    keep: np.ndarray,
    sources: list[list[int] | None],
    global_variance: bool | None = None,
) -> dict[str, Any]:
    """Leave-one-out LiRA over (K, N) phis and halves ``keep``; ``sources[k]``: shadow k's
    source images (full train numbering; None: not recorded). Returns, for ``online`` and
    ``offline``, :class:`AttackMetrics` over all train images (``all``) and over the targets'
    source images against the same non-members (``sources``, None when no target has any),
    pooled over targets; ``global_variance`` None: global below :data:`PER_EXAMPLE_VARIANCE_FROM`."""
    k = len(phis)
    glob = (k - 1) < PER_EXAMPLE_VARIANCE_FROM if global_variance is None else global_variance
    pooled: dict[str, dict[str, list]] = {a: {"all": [], "src": []} for a in ("online", "offline")}
    members, src_members = [], []
    for t in range(k):
        scores = target_scores(phis, keep, t, glob)
        is_src = np.zeros(phis.shape[1], bool)
        is_src[sources[t] or []] = True
        if (is_src & ~keep[t]).any():
            raise ArtifactError(f"LiRA shadow {t} names source images outside its half")
        use = is_src | ~keep[t]  # its sources against its non-members
        for a, sc in scores.items():
            pooled[a]["all"].append(sc)
            pooled[a]["src"].append(sc[use])
        members.append(keep[t])
        src_members.append(is_src[use])
    member, src_member = np.concatenate(members), np.concatenate(src_members)
    n_sources = int(src_member.sum())
    out: dict[str, Any] = {"global_variance": glob, "n_sources": n_sources}
    for a, parts in pooled.items():
        out[a] = {
            "all": AttackMetrics.of(member, np.concatenate(parts["all"])),
            "sources": AttackMetrics.of(src_member, np.concatenate(parts["src"])) if n_sources else None,
        }
    return out


# --- the shadows ---------------------------------------------------------------------------


def _default_distill(cfg_k: RunConfig, ds_k: MedDataset) -> SynSet:
    from meddistill.pipeline import distill_set

    return distill_set(cfg_k, ds_k, progress=False)[1]


def shadow_config(cfg: RunConfig, k: int, shadow_dir: Path, device: torch.device) -> RunConfig:
    """The real run's config with its own seeds and folders inside ``shadow_dir`` (no run or
    expert folder key can meet the real run's)."""
    cfg_k = copy.deepcopy(cfg)
    cfg_k.seed = derive_seed(cfg.seed, "lira-shadow", k) % 2**31
    cfg_k.experts.seed = derive_seed(cfg.experts.seed, "lira-shadow-experts", k) % 2**31
    cfg_k.out_dir = str(shadow_dir / "runs")
    cfg_k.experts_dir = str(shadow_dir / "experts")
    cfg_k.device = str(device)
    return cfg_k


def lira_identity(cfg: RunConfig, shadows: int, n_train: int) -> str:
    """What the shadows of a work folder were computed for: the pipeline (its distillation and
    evaluation identities), K and the train split's size."""
    return identity.lira_identity(cfg, shadows, n_train, FORMAT)


@torch.no_grad()
def _phis(net: torch.nn.Module, split: Split, device: torch.device, bs: int = 1024) -> np.ndarray:
    net.eval()
    out = [
        phi(net(split.images[i : i + bs].to(device)).float().cpu(), split.labels[i : i + bs])
        for i in range(0, len(split), bs)
    ]
    return torch.cat(out).numpy()


def _shadow_net(syn: SynSet, ds: MedDataset, cfg_k: RunConfig, device: torch.device) -> torch.nn.Module:
    from meddistill.evaluate import train_and_select
    from meddistill.nets import create_model, spec_for

    lr = cfg_k.eval.lr if cfg_k.eval.lr > 0 else (syn.lr or cfg_k.eval.lr_default)
    name = cfg_k.net.name
    seed = derive_seed(cfg_k.seed, "lira-net")
    _, state = train_and_select(syn.images, syn.targets(), ds, cfg_k, name, seed, lr, cfg_k.eval.epochs, device)
    net = create_model(spec_for(cfg_k.net, name), ds.shape, ds.num_classes).to(device)
    net.load_state_dict(state)
    return net


def _load_shadow(shadow_dir: Path, ident: str) -> dict | None:
    """A finished shadow's record (phis included), None if it has not finished."""
    meta_path = shadow_dir / "shadow.json"
    if not meta_path.exists():
        return None
    meta = read_json_object(meta_path, "delete its shadow folder to compute it again")
    if meta.get("identity") != ident:
        raise ConfigError(
            f"{shadow_dir} holds a LiRA shadow of another pipeline or K; use another work folder or delete it"
        )
    with np.load(shadow_dir / "phi.npz", allow_pickle=False) as z:
        meta["phi_train"], meta["phi_test"] = z["phi_train"], z["phi_test"]
    return meta


def run_shadow(
    cfg: RunConfig, ds: MedDataset, device: torch.device, k: int, half: np.ndarray, shadow_dir: Path,
    ident: str, distill_fn: DistillFn,
) -> dict:
    """Shadow ``k``: the pipeline on its half, a net on the set, phi on every train and test
    image; written atomically (``phi.npz``, then ``shadow.json``, which marks it finished)."""
    t0 = time.monotonic()
    subset = np.nonzero(half)[0]
    cfg_k = shadow_config(cfg, k, shadow_dir, device)
    syn = distill_fn(cfg_k, subset_dataset(ds, subset))
    net = _shadow_net(syn, ds, cfg_k, device)
    phi_train, phi_test = _phis(net, ds.train, device), _phis(net, ds.test, device)
    with atomic_path(shadow_dir / "phi.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, phi_train=phi_train, phi_test=phi_test, members=subset)
    meta = {
        "format": FORMAT,
        "identity": ident,
        "shadow": k,
        "seed": cfg_k.seed,
        "n_synthetic": len(syn.labels),
        "sources": full_train_sources(synset_sources(syn), subset),
        "seconds": round(time.monotonic() - t0, 2),
    }
    write_text_atomic(shadow_dir / "shadow.json", json.dumps(meta, indent=2, sort_keys=True))
    return {**meta, "phi_train": phi_train, "phi_test": phi_test}


@dataclass
class LiraResult:
    dataset: str
    method: str
    ipc: int
    shadows: int
    experts_per_shadow: bool
    global_variance: bool
    n_sources: int
    online: AttackMetrics
    offline: AttackMetrics
    online_sources: AttackMetrics | None
    offline_sources: AttackMetrics | None
    shadow_seconds: list[float]
    total_seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; a source block without sources is ``"n/a"``."""
        out = asdict(self)
        for key in ("online_sources", "offline_sources"):
            if out[key] is None:
                out[key] = "n/a"
        return out


def _notes(shadows: int, n_nonmembers: int, glob: bool, n_sources: int) -> list[str]:
    notes = []
    if shadows < 4:
        notes.append(f"K = {shadows}: some image has no IN observation in the other shadows; the scores read phi alone")
    if shadows < FEW_SHADOWS:
        notes.append(f"K = {shadows} < {FEW_SHADOWS} shadows: the figures are noisy")
    if 1 / max(1, n_nonmembers) > FPRS[0]:
        notes.append(f"{n_nonmembers} pooled non-members: TPR at 0.1 % FPR is read at FPR 0")
    if glob:
        notes.append(f"global variance (fewer than {PER_EXAMPLE_VARIANCE_FROM} other shadows)")
    if n_sources == 0:
        notes.append("the sets record no source images: source metrics n/a")
    return notes


def run_lira(
    cfg: RunConfig,
    ds: MedDataset,
    device: torch.device,
    shadows: int,
    work_dir: Path,
    progress: bool = True,
    distill_fn: DistillFn | None = None,
) -> LiraResult:
    """LiRA against the pipeline of ``cfg`` on ``ds`` with ``shadows`` shadow runs kept in
    ``work_dir`` (resumable); also writes ``<work_dir>/lira.json``. ``distill_fn(cfg_k, ds_k)``
    makes a shadow's set (default: :func:`meddistill.pipeline.distill_set`)."""
    from meddistill.distill import get_spec

    if shadows < 2:
        raise ConfigError(f"LiRA needs at least 2 shadows, got {shadows}")
    if ds.info.multi_label:
        raise ConfigError(f"{ds.info.name} is multi-label; LiRA supports single-label tasks")
    distill_fn = distill_fn or _default_distill
    n = len(ds.train)
    keep = balanced_halves(n, shadows, cfg.seed)
    check_halves(ds, keep, cfg.distill.ipc)
    ident = lira_identity(cfg, shadows, n)
    work_dir = Path(work_dir)
    records = []
    for k in tqdm(range(shadows), desc="lira shadows", unit="shadow", disable=not progress):
        shadow_dir = work_dir / f"shadow_{k}"
        rec = _load_shadow(shadow_dir, ident)
        records.append(rec or run_shadow(cfg, ds, device, k, keep[k], shadow_dir, ident, distill_fn))
    t0 = time.monotonic()
    phis = np.stack([r["phi_train"] for r in records])
    att = lira_attack(phis, keep, [r["sources"] for r in records])
    seconds = [float(r["seconds"]) for r in records]
    result = LiraResult(
        dataset=ds.info.name,
        method=cfg.distill.method,
        ipc=cfg.distill.ipc,
        shadows=shadows,
        experts_per_shadow=get_spec(cfg.distill.method).needs_experts,
        global_variance=att["global_variance"],
        n_sources=att["n_sources"],
        online=att["online"]["all"],
        offline=att["offline"]["all"],
        online_sources=att["online"]["sources"],
        offline_sources=att["offline"]["sources"],
        shadow_seconds=seconds,
        total_seconds=round(sum(seconds) + time.monotonic() - t0, 2),
        notes=_notes(shadows, att["online"]["all"].n_nonmembers, att["global_variance"], att["n_sources"]),
    )
    write_text_atomic(work_dir / "lira.json", json.dumps(result.to_dict(), indent=2, sort_keys=True))
    return result
