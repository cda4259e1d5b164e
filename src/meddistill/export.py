"""Export a run as a self-contained folder another lab can use without meddistill.

Contents: ``synset.npz`` in MedMNIST layout (``train_images`` uint8 (N, H, W[, 3]) and
``train_labels`` (N, 1) like the official files, plus ``train_images_float`` in the
normalised space with ``mean``/``std``, optional ``train_soft_labels``, ``lr``), ``card.md``
(source dataset and licence, method, config, measured accuracy/AUC, audit figures),
``meta.json``, the run's figures, and ``train_example.py``: plain PyTorch, about 20 lines.

The set is validated first (:func:`meddistill.checks.check_synset`); the folder is written
under a temporary name next to ``out`` and renamed at the end, so a failed export leaves no
half-written folder; files get ordinary permissions (0666/0777 less the umask).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
import yaml

from meddistill import dp
from meddistill.audit import PERCENTILE, read_audit
from meddistill.config import read_yaml
from meddistill.data import get_info
from meddistill.data.describe import card_source
from meddistill.errors import ArtifactError, ConfigError
from meddistill.synset import SynSet
from meddistill.synset_check import check_synset
from meddistill.utils import atomic_path, read_json_object, write_text_atomic

EXAMPLE = '''"""Train a small CNN on the exported synthetic set with plain PyTorch (no meddistill)."""
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F

z = np.load("synset.npz", allow_pickle=False)
x = torch.tensor(z["train_images"], dtype=torch.float32) / 255.0          # (N, H, W[, C]) uint8 -> [0, 1]
x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)              # -> (N, C, H, W)
mean, std = torch.tensor(z["mean"]).view(1, -1, 1, 1), torch.tensor(z["std"]).view(1, -1, 1, 1)
x, y = (x - mean) / std, torch.tensor(z["train_labels"][:, 0], dtype=torch.long)
lr = float(z["lr"]) if np.isfinite(z["lr"]) else 0.01
c, k = x.shape[1], int(y.max()) + 1
net = nn.Sequential(nn.Conv2d(c, 32, 3, padding=1), nn.GroupNorm(32, 32), nn.ReLU(), nn.AvgPool2d(2),
                    nn.Conv2d(32, 32, 3, padding=1), nn.GroupNorm(32, 32), nn.ReLU(), nn.AvgPool2d(2),
                    nn.Flatten(), nn.LazyLinear(k))
net(x[:1])
opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
for epoch in range(300):
    loss = F.cross_entropy(net(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
print(f"final training loss {loss.item():.4f}; evaluate on your own real test images, normalised with mean/std")
'''


#: files every export holds besides synset.npz, and a run folder never does
EXPORT_MARKERS = ("card.md", "train_example.py")


def is_export(folder: str | Path) -> bool:
    """Whether ``folder`` is an exported set (the output of :func:`export_run`)."""
    return all((Path(folder) / name).is_file() for name in EXPORT_MARKERS)


def to_uint8(syn: SynSet) -> np.ndarray:
    px = (syn.pixels().numpy() * 255.0).round().clip(0, 255).astype(np.uint8)  # (N, C, H, W)
    return px[:, 0] if px.shape[1] == 1 else px.transpose(0, 2, 3, 1)


def _audit_lines(audit: dict | None) -> list[str]:
    if audit is None:
        return ["Not audited (run `meddistill audit <run>` before exporting)."]
    t, c, n = audit["traceability"], audit["closeness"], audit["n_synthetic"]
    lines = [
        f"- Initialisation: `{audit.get('init')}`; every image's sources (the train images it was initialised "
        "or re-initialised from) are recorded in `meta.json` (`sources`)."
        if audit.get("sources_recorded")
        else "- The sources of the images were not recorded: traceability could not be measured.",
        f"- Traceability: {len(t['ssim']['traced'])} of {n} images have their own source as the most similar train "
        f"image of their class by SSIM, {len(t['cos']['traced'])} by feature cosine (chance: "
        f"{100 * t['ssim']['chance_fraction']:.3g} %; p = {t['ssim']['p_value']:.2g} / {t['cos']['p_value']:.2g}; "
        f"{'at' if t['at_chance'] else 'ABOVE'} chance).",
        f"- Closeness: {len(c['flagged'])} of {n} images are closer to a train image than {c['percentile']:g} % of "
        f"{c['n_reference']} real test images are (highest SSIM {max(c['ssim']['max'], default=0):.3f}; "
        f"test images' median {c['ssim']['reference_median']:.3f}).",
    ]
    if audit.get("loss_screen"):
        lines.append(f"- Loss-attack screen AUC (weak; 0.5 = nothing found): {audit['loss_screen']['auc']:.3f}.")
    if audit.get("lira"):
        h = audit["lira"]["headline"]
        lines.append(
            f"- LiRA membership inference ({h['shadows']} shadow distillations, offline): AUC {h['auc']:.3f}, "
            f"TPR {100 * h['tpr_at_0.1pct']:.2f} % at 0.1 % FPR and {100 * h['tpr_at_1pct']:.2f} % at 1 % FPR."
        )
    lines.append(
        "- The audit's figures (each image beside its nearest real train images) and per-image scores stay in the "
        "run folder with the data holder: they show and index patient images, so they are not exported."
    )
    return lines


def dp_statement(record: dict | None, config: dict | None) -> tuple[list[str], bool]:
    """The card's DP section and whether the set is differentially private: only when the recorded
    mechanism's parameters give back the recorded ε under the recorded accountant (recomputed
    here) and its target is the run's ``dp.epsilon``."""
    if not record:
        return ["No formal guarantee: this set was not distilled under `--dp-epsilon` (see the audit below)."], False
    try:
        settings = dp.DPSettings.from_dict(record)
        again = settings.recompute()
    except ConfigError as exc:  # Opacus missing, or an unknown accountant
        return [f"A DP record is present but cannot be verified here ({exc}): no guarantee is claimed."], False
    except (KeyError, TypeError, ValueError):
        return ["The DP record is incomplete: no guarantee is claimed."], False
    target = ((config or {}).get("dp") or {}).get("epsilon")
    if abs(again - settings.epsilon) > 1e-9 * max(1.0, settings.epsilon) or (
        target is not None and float(target) != settings.target_epsilon
    ):
        why = (
            f"The recorded DP parameters give ε = {again:.4g}, not the recorded {settings.epsilon:.4g} "
            f"(target {settings.target_epsilon:g}, run's dp.epsilon {target}): no guarantee is claimed."
        )
        return [why], False
    return [
        f"**({settings.epsilon:.3g}, {settings.delta:.1g})-differentially private** with respect to the real "
        f"train split (add/remove one image; N, the class counts and the image shape are public): "
        f"{record.get('mechanism', 'DP mechanism')}, {settings.accountant.upper()} accountant (Opacus), noise "
        f"multiplier {settings.noise_multiplier:.4g}, clipping norm {settings.max_grad_norm:g}, sampling rate "
        f"{settings.sample_rate:.4g}, {settings.steps} steps composed; the distillation read no real train image. "
        "Recomputed from these parameters when this card was written.",
    ], True


def _warning(audit: dict | None) -> list[str]:
    """The card's first lines for a set exported with ``--allow-traceable``."""
    if audit is not None and audit.get("shareable"):
        return []
    why = "it was not audited" if audit is None else "it failed the privacy audit (below)"
    return [
        f"> **Not shown to be free of patient images: {why}.** Exported with `--allow-traceable`; "
        "do not share it outside the institution that holds the source images.",
        "",
    ]


def _card(
    syn: SynSet, config: dict | None, evals: list[dict], audit: dict | None, source: list[str],
    statement: tuple[list[str], bool],
) -> str:
    """``statement``: :func:`dp_statement` of the set (its lines, and whether it is differentially private)."""
    dp_lines, private = statement
    m = syn.meta
    lines = [
        f"# Synthetic {m['dataset']} ({m.get('method')}, {m.get('ipc')} images per class)",
        "",
        *([] if private else _warning(audit)),
        *source,  # own images: from the run's data.json; MedMNIST: the registry and citation
        f"- Method: `{m.get('method')}`; seed {m.get('seed')}; config hash `{m.get('config_hash')}`; "
        f"meddistill {m.get('code_version')}.",
        f"- Learned student learning rate: {syn.lr if syn.lr is not None else 'n/a'}.",
        "",
        "## Measured accuracy (fresh nets trained on this set, real test split)",
        "",
    ]
    if evals:
        lines += ["| net | test ACC (%) | test AUC (%) | seeds |", "|---|---|---|---|"]
        for ev in evals:
            for net, s in ev["per_net"].items():
                lines.append(
                    f"| {net} | {100 * s['acc_mean']:.2f} ± {100 * s['acc_std']:.2f} | "
                    f"{100 * s['auc_mean']:.2f} ± {100 * s['auc_std']:.2f} | {s['n']} |"
                )
    else:
        lines.append("Not evaluated yet (run `meddistill eval <run>` before exporting).")
    lines += ["", "## Differential privacy", "", *dp_lines]
    audit_lines = (
        ["Not included: the audit's scores are computed from the real train images outside the privacy budget; "
         "the guarantee above is this set's privacy statement."]
        if private else _audit_lines(audit)
    )  # fmt: skip
    lines += ["", "## Privacy audit", "", *audit_lines]
    lines += [
        "",
        "## Files",
        "",
        "- `synset.npz`: `train_images` (uint8, MedMNIST layout), `train_labels` (N, 1), "
        "`train_images_float` (normalised), `mean`, `std`, `lr`, optional `train_soft_labels`.",
        "- `train_example.py`: plain PyTorch training on the set.",
        "- `config.yaml`: the full resolved config.",
    ]
    if config:
        lines += [
            "",
            "## Config (distillation)",
            "",
            "```yaml",
            yaml.safe_dump(config.get("distill", {})).strip(),
            "```",
        ]
    return "\n".join(lines) + "\n"


def _check(syn: SynSet, run_dir: Path) -> None:
    """The set must be a valid training set of the dataset its meta names (a MedMNIST subset's
    registry facts; for own images, the classes and channels the set itself records)."""
    from meddistill.data.medmnist import UnknownDatasetError

    name = syn.meta.get("dataset")
    if not name:
        raise ArtifactError(f"the set in {run_dir} does not say which dataset it belongs to (no meta)")
    size = int(syn.meta.get("size") or syn.images.shape[-1])
    try:
        info = get_info(name)
        channels, num_classes = info.channels, info.num_classes
    except UnknownDatasetError:  # own images
        channels, num_classes = len(syn.mean), int(syn.meta.get("num_classes") or 0)
    check_synset(syn, (channels, size, size), num_classes, f"the set in {run_dir}")


def _staging_dir(out: Path) -> Path:
    """A new folder next to ``out`` (ordinary permissions), renamed to ``out`` when complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = out.parent / f".{out.name}.{secrets.token_hex(6)}.tmp"
        try:
            tmp.mkdir()
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name next to {out}")


def _evals_of(run_dir: Path, syn: SynSet) -> list[dict]:
    """The run's evaluations of this very set (caches of an earlier content are left out)."""
    rows = [read_json_object(p, "delete it and run `meddistill eval`") for p in sorted(run_dir.glob("eval_*.json"))]
    return [r for r in rows if r.get("synset_hash") == syn.content_hash()]


def _write_folder(run_dir: Path, syn: SynSet, out: Path, card: str) -> None:
    arrays = {
        "train_images": to_uint8(syn),
        "train_labels": syn.labels.numpy().astype(np.int64).reshape(-1, 1),
        "train_images_float": syn.images.numpy(),
        "mean": syn.mean.numpy(),
        "std": syn.std.numpy(),
        "lr": np.array(float("nan") if syn.lr is None else syn.lr),
        "meta": np.array(json.dumps(syn.meta, sort_keys=True)),
    }
    if syn.soft_labels is not None:
        arrays["train_soft_labels"] = syn.soft_labels.numpy()
    with atomic_path(out / "synset.npz") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    write_text_atomic(out / "card.md", card)
    write_text_atomic(out / "meta.json", json.dumps(syn.meta, indent=2, sort_keys=True))
    write_text_atomic(out / "train_example.py", EXAMPLE)
    # not the audit's figures or audit.json: they show and index the nearest real train images
    for src in [run_dir / n for n in ("config.yaml", "grid.png", "loss.png")]:
        if src.exists():
            shutil.copyfile(src, out / src.name)  # not copy(): a private source mode is not inherited


def _audit_of(run_dir: Path, syn: SynSet, allow_traceable: bool) -> dict | None:
    """The run's audit of this very set; a set that is not shown shareable is refused unless
    ``allow_traceable``."""
    audit = read_audit(run_dir)
    if audit is not None and audit.get("synset_hash") != syn.content_hash():
        audit = None  # an audit of an earlier content of the folder
    strict = audit is not None and audit["closeness"]["percentile"] <= PERCENTILE  # a laxer audit shows nothing
    if allow_traceable or (strict and audit.get("shareable")):
        return audit
    if audit is None:
        raise ArtifactError(
            f"the set in {run_dir} has no privacy audit of its current content: run `meddistill audit {run_dir}` "
            "first (or export with --allow-traceable, and the card says it was not audited)"
        )
    t, c = audit["traceability"], audit["closeness"]
    if not audit.get("sources_recorded"):
        raise ArtifactError(
            f"the set in {run_dir} records no sources (made before they were recorded), so it cannot be shown "
            "to trace at chance: distill it again, or export with --allow-traceable (the card then says so)"
        )
    if not strict:
        raise ArtifactError(
            f"the audit of {run_dir} flagged images only above the test split's {c['percentile']:g}th percentile; "
            f"audit it at the default ({PERCENTILE:g}) before exporting, or export with --allow-traceable"
        )
    raise ArtifactError(
        f"the set in {run_dir} is not shareable: {len(t['ssim']['traced'])} image(s) traced to their source "
        f"({'at' if t['at_chance'] else 'above'} chance), {len(c['flagged'])} closer to a train image than "
        f"{c['percentile']:g} % of test images; distill it from a shareable start (init dm, the default of "
        "trajectory matching; method.init=noise for DM or DC) or export with --allow-traceable (the card then "
        "says so in its first lines)"
    )


def _run_config(run_dir: Path) -> dict | None:
    return read_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").exists() else None


def export_run(
    run_dir: str | Path, out: str | Path, licence: str | None = None, allow_traceable: bool = False
) -> Path:
    """A standalone folder another lab can use; written to a temporary sibling and renamed, so a
    failed export leaves nothing behind. ``licence``: own images only, the data's licence. A set
    the run's audit did not show shareable is refused unless ``allow_traceable``; a differentially
    private set (:func:`dp_statement`) needs no audit, and the audit's figures are never exported."""
    run_dir, out = Path(run_dir), Path(out)
    syn = SynSet.load(run_dir)
    _check(syn, run_dir)
    source, syn.meta["license"] = card_source(run_dir, syn.meta, licence)  # own images: the user's licence
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"export folder {out} is a file, not a folder")
    if out.exists() and any(out.iterdir()):
        raise ArtifactError(f"export folder {out} is not empty")
    config = _run_config(run_dir)
    statement = dp_statement(syn.meta.get("dp"), config)  # the accountant runs once
    private = statement[1]
    audit = None if private else _audit_of(run_dir, syn, allow_traceable)  # a DP set's statement is its guarantee
    card = _card(syn, config, _evals_of(run_dir, syn), audit, source, statement)
    tmp = _staging_dir(out)
    try:
        _write_folder(run_dir, syn, tmp, card)
        os.replace(tmp, out)  # also over an empty folder
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out
