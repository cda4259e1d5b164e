"""Privacy audit of a synthetic set: how close is each image to a real patient image, and does
a model trained on the set leak membership of the real training split?

- Nearest real training images per synthetic image by SSIM (pixel space, [0, 1]), by L2
  (normalised space) and by cosine in an expert's feature space.
- Memorisation score = the highest SSIM to any real training image; an image is flagged
  when it exceeds ``ssim_threshold`` (a copy scores 1.0).
- Membership inference: a net is trained on the synthetic set with the evaluation protocol;
  its per-sample loss on real train images (members) and real test images (non-members)
  gives the attack's AUC (score = −loss). 0.5 means no measurable leak.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from meddistill.config import RunConfig
from meddistill.data.loader import MedDataset
from meddistill.errors import ConfigError
from meddistill.metrics import binary_auc
from meddistill.synset import SynSet
from meddistill.utils import derive_seed, write_text_atomic


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


@dataclass
class AuditReport:
    n_synthetic: int
    ssim_threshold: float
    max_ssim: list[float]
    nearest_ssim_index: list[int]
    min_l2: list[float]
    max_feature_cosine: list[float]
    flagged: list[int]
    mia_auc: float
    mia_members: int
    mia_nonmembers: int
    summary: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def nearest_real(syn: SynSet, ds: MedDataset, features=None) -> dict[str, torch.Tensor]:
    real = ds.train.images
    px_syn = syn.pixels()
    px_real = ds.denormalize(real).clamp(0, 1)
    ssim = ssim_matrix(px_syn, px_real)
    l2 = torch.cdist(syn.images.flatten(1), real.flatten(1)) / np.sqrt(real[0].numel())
    out = {"ssim": ssim, "l2": l2}
    if features is not None:
        fs, fr = features(syn.images), features(real)
        out["cos"] = F.normalize(fs, dim=1) @ F.normalize(fr, dim=1).T
    return out


def membership_auc(syn: SynSet, ds: MedDataset, cfg: RunConfig, device, n: int = 500) -> tuple[float, int, int]:
    """Loss-threshold attack (members: train, non-members: test) on a net trained on the synthetic
    set with the evaluation protocol (:func:`~meddistill.evaluate.train_and_select`: its epochs,
    lr schedule, DSA, and the checkpoint chosen on validation)."""
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
    return binary_auc(member, scores), len(mi), len(ni)


def audit(
    syn: SynSet,
    ds: MedDataset,
    cfg: RunConfig,
    device,
    ssim_threshold: float = 0.9,
    features=None,
    near: dict[str, torch.Tensor] | None = None,
) -> AuditReport:
    """``near``: the output of :func:`nearest_real`, when the caller already computed it."""
    if not 0.0 <= ssim_threshold <= 1.0:
        raise ConfigError(f"ssim_threshold must be between 0 and 1, got {ssim_threshold}")
    near = near if near is not None else nearest_real(syn, ds, features)
    max_ssim, arg = near["ssim"].max(1)
    mia, nm, nn_ = membership_auc(syn, ds, cfg, device)
    flagged = [int(i) for i in torch.nonzero(max_ssim > ssim_threshold).view(-1)]
    cos = near["cos"].max(1).values.tolist() if "cos" in near else []
    return AuditReport(
        n_synthetic=len(syn.labels),
        ssim_threshold=ssim_threshold,
        max_ssim=max_ssim.tolist(),
        nearest_ssim_index=arg.tolist(),
        min_l2=near["l2"].min(1).values.tolist(),
        max_feature_cosine=cos,
        flagged=flagged,
        mia_auc=mia,
        mia_members=nm,
        mia_nonmembers=nn_,
        summary={
            "mean_max_ssim": float(max_ssim.mean()),
            "flagged_fraction": len(flagged) / max(1, len(syn.labels)),
            "mia_auc": mia,
        },
    )


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
    run_dir: Path, syn: SynSet, ds: MedDataset, cfg: RunConfig, device, ssim_threshold: float = 0.9, features=None
) -> AuditReport:
    near = nearest_real(syn, ds, features)  # the SSIM matrix serves the report and the figure
    rep = audit(syn, ds, cfg, device, ssim_threshold, features, near)
    write_text_atomic(run_dir / "audit.json", rep.to_json())
    audit_figure(syn, ds, near["ssim"], run_dir / "audit.png")
    return rep
