"""Expert trajectories: N nets trained on the real train split, parameters saved per epoch.

Layout: ``<experts_dir>/<dataset>_<size>/<net tag>-<hash>/expert_<k>.safetensors`` holding
``trajectory`` (epochs + 1, P) float32 (row 0 is the init), plus ``meta.json`` (dataset,
net spec, expert config, seed, code version).  The hash keys the folder on everything that
changes a trajectory, so two profiles never share (or clobber) buffers.

Resumable: after every epoch the partial trajectory is written atomically to
``expert_<k>.partial.safetensors``; a killed run continues from the last finished epoch and
produces the same trajectory it would have produced uninterrupted.

On demand: a distillation trains its experts only as far as its schedule reads them
(``train_experts(..., epochs=n)``); the partial files then hold epochs 0..n and serve as the
trajectories, bit for bit the first n epochs of the full ones. A later run that reads further
(or ``meddistill experts``) continues them; the folder's identity is that of the full experts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from meddistill import dp
from meddistill.augment import for_dataset
from meddistill.config import ExpertConfig, RunConfig
from meddistill.data.loader import MedDataset
from meddistill.data.sources import dataset_dir
from meddistill.errors import ArtifactError, ConfigError
from meddistill.identity import expert_identity
from meddistill.nets import FlatParams, create_model, flatten_params, load_flat
from meddistill.parallel import plan_workers, run_tasks
from meddistill.process import sigint_deferred
from meddistill.train import Diverged, TrainPlan, fit, sgd
from meddistill.utils import (
    atomic_path,
    autocast,
    code_version,
    config_hash,
    derive_seed,
    read_json_object,
    write_text_atomic,
)


def expert_dir(cfg: RunConfig) -> Path:
    ident = expert_identity(cfg)
    return Path(cfg.experts_dir) / dataset_dir(cfg) / f"{cfg.net.tag()}-{config_hash(ident, 8)}"


def _save(path: Path, traj: torch.Tensor, extra: dict[str, torch.Tensor] | None = None) -> None:
    tensors = {"trajectory": traj.contiguous()}
    tensors.update(extra or {})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "meddistill-expert-v1"})


@contextmanager
def _reading_expert(path: Path) -> Iterator[None]:
    """Turn a damaged or missing expert file into one :class:`ArtifactError` saying what to do."""
    try:
        yield
    except (SafetensorError, OSError, KeyError, IndexError, ValueError) as exc:
        raise ArtifactError(f"expert file {path} is unreadable ({exc}); delete it to retrain") from None


def check_finite(path: Path, rows: torch.Tensor) -> torch.Tensor:
    """``rows`` of the expert file ``path``, refused in one line if any value is NaN or Inf (a
    damaged file: training never saves a diverged expert)."""
    if not bool(torch.isfinite(rows).all()):
        raise ArtifactError(f"expert file {path} holds NaN or Inf values (damaged); delete it to retrain it")
    return rows


def load_trajectory(path: Path) -> torch.Tensor:
    """The trajectory of an expert file, checked to be finite."""
    with _reading_expert(path):
        traj = load_file(str(path))["trajectory"]
    return check_finite(path, traj)


def trajectory_shape(path: Path) -> tuple[int, int]:
    """(epochs + 1, parameters per epoch) of an expert file, read from its header (the tensor
    is not loaded)."""
    with _reading_expert(path), safe_open(str(path), framework="pt") as f:
        rows, width = f.get_slice("trajectory").get_shape()
        return int(rows), int(width)


def expert_files(folder: Path) -> list[Path]:
    """The finished expert files of a folder, by index (``.partial`` files left out)."""
    files = [f for f in folder.glob("expert_*.safetensors") if ".partial" not in f.name]
    return sorted(files, key=lambda p: int(p.stem.split("_")[1]))


def check_expert_files(folder: Path, num_params: int, net_tag: str) -> None:
    """Every finished expert in ``folder`` holds ``num_params`` parameters per epoch."""
    for f in expert_files(folder):
        width = trajectory_shape(f)[1]
        if width != num_params:
            raise ArtifactError(
                f"{f} holds {width} parameters per epoch, but {net_tag} on these images has {num_params} "
                f"(another net or an older meddistill); delete {folder} to retrain"
            )


def partial_problem(path: Path, num_params: int) -> str | None:
    """What is wrong with a partial expert file, or None: unreadable, another width than
    ``num_params``, fewer than one row, or NaN/Inf values (the file is read whole: a partial
    file holds the few epochs a run read so far)."""
    try:
        with _reading_expert(path):
            state = load_file(str(path))
            traj = state["trajectory"]
    except ArtifactError:
        return "unreadable"
    if traj.dim() != 2 or traj.shape[0] < 1 or traj.shape[1] != num_params:
        return f"shape {tuple(traj.shape)}, not (epochs + 1, {num_params})"
    if not all(bool(torch.isfinite(t).all()) for t in state.values()):
        return "NaN or Inf values"
    return None


def drop_damaged_partials(folder: Path, num_params: int, num_experts: int) -> None:
    """Delete the partial expert files of ``folder`` that cannot be continued (see
    :func:`partial_problem`), with a note each: their experts are trained again from the start,
    which gives the trajectory an undamaged file would have continued to."""
    for k in range(num_experts):
        part = partial_path(folder, k)
        if expert_path(folder, k).exists() or not part.exists():
            continue
        problem = partial_problem(part, num_params)
        if problem is not None:
            print(f"meddistill: note: {part} is damaged ({problem}); training expert {k} again from the start")
            part.unlink()


def read_meta(path: Path) -> dict:
    """An expert folder's ``meta.json``; a corrupt one is an :class:`ArtifactError`."""
    return read_json_object(path, f"delete {path.parent} to retrain these experts")


def num_params(cfg: RunConfig, ds: MedDataset) -> int:
    with sigint_deferred(), torch.device("meta"):  # see process.sigint_deferred
        return FlatParams.of(create_model(cfg.net, ds.shape, ds.num_classes)).total


def require_experts(
    cfg: RunConfig, ds: MedDataset, how: str = "", device: torch.device | None = None, progress: bool = True
) -> Path:
    """The folder of this config's finished experts, checked. Experts that a distillation
    trained only as far as it read them are finished here (given a ``device``); no experts at
    all is an error, not a reason to train."""
    folder = expert_dir(cfg)
    if not (folder / "expert_0.safetensors").is_file():
        if device is None or not partial_path(folder, 0).is_file():
            raise ArtifactError(
                f"no trained experts at {folder}{how}; pass --experts-dir, or train them with `meddistill experts`"
            )
        print(f"meddistill: note: finishing the experts in {folder} (trained only as far as a run read them)")
        train_experts(ds, cfg, device, progress=progress)
    check_expert_files(folder, num_params(cfg, ds), cfg.net.tag())
    return folder


def _accuracy(net, x: torch.Tensor, y: torch.Tensor, device, bf16: bool, bs: int = 1024) -> float:
    net.eval()
    correct = 0
    with torch.no_grad(), autocast(device, bf16):
        for i in range(0, len(x), bs):
            out = net(x[i : i + bs].to(device))
            correct += int((out.argmax(1).cpu() == y[i : i + bs]).sum())
    net.train()
    return correct / max(1, len(x))


def _resume(
    partial: Path, net: torch.nn.Module, opt: torch.optim.Optimizer, device: torch.device
) -> tuple[list[torch.Tensor], list[float]]:
    """The trajectory rows and val accuracies of a partial expert file, with ``net`` and the
    momentum buffers of ``opt`` restored to its last epoch; a fresh start if there is none."""
    fresh = [flatten_params(net).cpu()], []
    if not partial.exists():
        return fresh
    try:
        state = load_file(str(partial))
        rows = list(state["trajectory"].unbind(0))
        val_acc = state["val_acc"].tolist()
        load_flat(net, rows[-1].to(device))
        if "momentum" in state:
            spec = FlatParams.of(net).unflatten(state["momentum"].to(device))
            for name, p in net.named_parameters():
                opt.state[p]["momentum_buffer"] = spec[name].clone()
    except (SafetensorError, OSError, KeyError, RuntimeError):
        return fresh  # unreadable partial: start over
    return rows, val_acc


def expert_plan(ds: MedDataset, cfg: RunConfig, order_tag: tuple, dsa_tag: tuple) -> TrainPlan:
    """How a net is trained on the real train split with the expert settings (``cfg.experts``)."""
    e = cfg.experts
    return TrainPlan(
        lr=e.lr,
        batch_size=e.batch_size,
        order_tag=order_tag,
        dsa_tag=dsa_tag,
        momentum=e.momentum,
        weight_decay=e.weight_decay,
        dsa=for_dataset(ds.info, cfg.dsa) if e.dsa else None,
        bf16=e.bf16 is True,
        check_finite=True,
    )


def train_one_expert(
    ds: MedDataset,
    cfg: RunConfig,
    k: int,
    path: Path,
    device: torch.device,
    on_epoch: Callable[[int], None] | None = None,
    until: int | None = None,
) -> dict:
    """Train expert ``k`` (resuming from its partial file) to epoch ``until`` (default: all of
    ``cfg.experts.epochs``, which finishes its file ``path``; fewer leave the partial file)."""
    ecfg: ExpertConfig = cfg.experts
    if cfg.dp.on:
        return _train_one_dp_expert(ds, cfg, k, path, device, on_epoch, until)
    plan = expert_plan(ds, cfg, (ecfg.seed, "expert-order", k), (ecfg.seed, "expert-dsa", k))
    torch.manual_seed(derive_seed(ecfg.seed, "expert-init", k))
    net = create_model(cfg.net, ds.shape, ds.num_classes).to(device)
    opt = sgd(net, plan)
    partial = partial_path(path.parent, k)
    rows, val_acc = _resume(partial, net, opt, device)

    def save_epoch(epoch: int) -> None:
        rows.append(flatten_params(net).cpu())
        val_acc.append(_accuracy(net, ds.val.images, ds.val.labels, device, ecfg.bf16))
        extra = {"val_acc": torch.tensor(val_acc)}
        if ecfg.momentum > 0:
            extra["momentum"] = torch.cat([opt.state[p]["momentum_buffer"].reshape(-1) for p in net.parameters()]).cpu()
        _save(partial, torch.stack(rows), extra)
        if on_epoch:
            on_epoch(epoch)

    last = ecfg.epochs if until is None else min(until, ecfg.epochs)
    try:
        epochs = range(len(rows) - 1, last)
        fit(net, opt, ds.train.images, ds.train.labels, plan, epochs, device, on_epoch=save_epoch)
    except Diverged as exc:
        raise ConfigError(f"expert {k} diverged ({exc}); lower experts.lr") from None
    if len(rows) - 1 == ecfg.epochs:
        _save(path, torch.stack(rows), {"val_acc": torch.tensor(val_acc)})
        partial.unlink(missing_ok=True)
    return {"expert": k, "final_val_acc": val_acc[-1] if val_acc else None}


def final_accuracies(folder: Path, ds: MedDataset, cfg: RunConfig, device: torch.device) -> dict[str, list[float]]:
    """Each finished expert's last checkpoint on the val and test splits (a report of what the
    buffer learned, e.g. at each ε; nothing selects on it)."""
    net = create_model(cfg.net, ds.shape, ds.num_classes).to(device)
    out: dict[str, list[float]] = {"val": [], "test": []}
    for path in expert_files(folder):
        load_flat(net, load_trajectory(path)[-1].to(device))
        out["val"].append(_accuracy(net, ds.val.images, ds.val.labels, device, False))
        out["test"].append(_accuracy(net, ds.test.images, ds.test.labels, device, False))
    return out


def _dp_resume(partial: Path) -> tuple[dp.DPExpertState | None, list[float]]:
    """A DP expert's partial file as the state :func:`meddistill.dp.train_dp_expert` resumes from."""
    if not partial.exists():
        return None, []
    try:
        state = load_file(str(partial))
        momentum = state.get("momentum")
        return dp.DPExpertState(state["trajectory"], momentum), state["val_acc"].tolist()
    except (SafetensorError, OSError, KeyError, RuntimeError):
        return None, []  # unreadable partial: start over


def _train_one_dp_expert(
    ds: MedDataset,
    cfg: RunConfig,
    k: int,
    path: Path,
    device: torch.device,
    on_epoch: Callable[[int], None] | None,
    until: int | None,
) -> dict:
    """Expert ``k`` trained with DP-SGD (:func:`meddistill.dp.train_dp_expert`), with the
    mechanism recorded in the folder's ``meta.json`` by :func:`train_experts`; partial files and
    resume as for any expert (fp32: bf16 does not apply)."""
    ecfg = cfg.experts
    settings = dp.DPSettings.from_dict(read_meta(path.parent / "meta.json")["dp"])
    _, per_epoch = dp.poisson_schedule(len(ds.train), ecfg.batch_size)
    plan = dp.DPSGDPlan(
        lr=ecfg.lr, max_grad_norm=settings.max_grad_norm, noise_multiplier=settings.noise_multiplier,
        sample_rate=settings.sample_rate, steps_per_epoch=per_epoch, momentum=ecfg.momentum,
        weight_decay=ecfg.weight_decay, dsa=for_dataset(ds.info, cfg.dsa) if ecfg.dsa else None,
    )  # fmt: skip
    torch.manual_seed(derive_seed(ecfg.seed, "expert-init", k))
    net = create_model(cfg.net, ds.shape, ds.num_classes).to(device)
    partial = partial_path(path.parent, k)
    resume, val_acc = _dp_resume(partial)

    def save_epoch(epoch: int, state: dp.DPExpertState) -> None:
        val_acc.append(_accuracy(net, ds.val.images, ds.val.labels, device, False))
        extra = {"val_acc": torch.tensor(val_acc)}
        if state.momentum is not None:
            extra["momentum"] = state.momentum
        _save(partial, state.trajectory, extra)
        if on_epoch:
            on_epoch(epoch)

    last = ecfg.epochs if until is None else min(until, ecfg.epochs)
    train = ds.train
    traj = dp.train_dp_expert(net, train.images, train.labels, plan, ecfg.seed, k, last, device, resume, save_epoch)
    if traj.shape[0] - 1 == ecfg.epochs:
        _save(path, traj, {"val_acc": torch.tensor(val_acc)})
        partial.unlink(missing_ok=True)
    return {"expert": k, "final_val_acc": val_acc[-1] if val_acc else None}


def train_experts(
    ds: MedDataset, cfg: RunConfig, device: torch.device, progress: bool = True, epochs: int | None = None
) -> Path:
    """Train (or finish) ``cfg.experts.num_experts`` experts up to epoch ``epochs`` (default: all
    ``cfg.experts.epochs``); return their folder."""
    if ds.info.multi_label:
        raise ConfigError(f"{ds.info.name} is multi-label; class-wise distillation supports single-label tasks")
    out = expert_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "meta.json"
    meta = {
        "identity": expert_identity(cfg),
        "num_params": num_params(cfg, ds),
        "code_version": code_version(),
        "format": "trajectory: (epochs+1, num_params) float32, row 0 = init",
    }
    if cfg.dp.on:  # the mechanism every checkpoint of the folder was trained with, accounted once
        dp.check_public(ds)
        meta["dp"] = {**dp.expert_settings(cfg, len(ds.train)).to_dict(), "mechanism": "DP-SGD experts"}
    if meta_path.exists():
        old = read_meta(meta_path)
        if old.get("identity") != meta["identity"]:
            raise ArtifactError(f"{meta_path} describes different experts; remove {out} or change experts_dir")
        if old.get("dp") != meta.get("dp"):  # e.g. another Opacus calibrates another σ for the same settings
            raise ArtifactError(
                f"the experts in {out} were trained with another DP mechanism ({old.get('dp')}) than this "
                f"version computes ({meta.get('dp')}); remove {out} to retrain them, or change experts_dir"
            )
    check_expert_files(out, meta["num_params"], cfg.net.tag())
    drop_damaged_partials(out, meta["num_params"], cfg.experts.num_experts)
    write_text_atomic(meta_path, json.dumps(meta, indent=2, sort_keys=True))
    target = cfg.experts.epochs if epochs is None else min(epochs, cfg.experts.epochs)
    have = {k: epochs_trained(out, k, cfg.experts.epochs) for k in range(cfg.experts.num_experts)}
    todo = [k for k, n in have.items() if n < target]
    plan = plan_workers(cfg.workers, device, len(todo))
    tasks = [(ds, cfg, k, str(expert_path(out, k)), device, target) for k in todo]
    desc = f"experts {cfg.dataset}" + (f" ({plan.processes} processes)" if plan.processes else "")
    total = sum(target - have[k] for k in todo)
    with tqdm(total=total, desc=desc, unit="epoch", disable=not progress) as bar:
        for info in run_tasks(_expert_task, tasks, plan, lambda: bar.update(1)):
            bar.set_postfix(val_acc=f"{info['final_val_acc']:.3f}")
    return out


def _expert_task(ds: MedDataset, cfg: RunConfig, k: int, path: str, device: torch.device, until: int, tick) -> dict:
    return train_one_expert(ds, cfg, k, Path(path), device, lambda _epoch: tick(), until)


def expert_path(folder: Path, k: int) -> Path:
    """Expert ``k``'s finished trajectory file."""
    return Path(folder) / f"expert_{k}.safetensors"


def partial_path(folder: Path, k: int) -> Path:
    """Expert ``k``'s partial trajectory (the epochs trained so far)."""
    return Path(folder) / f"expert_{k}.partial.safetensors"


def epochs_trained(folder: Path, k: int, full: int) -> int:
    """Epochs expert ``k`` of ``folder`` has: ``full`` when finished, else its partial file's
    (an unreadable partial file counts as none: training starts over)."""
    if expert_path(folder, k).exists():
        return full
    part = partial_path(folder, k)
    if not part.exists():
        return 0
    try:
        return trajectory_shape(part)[0] - 1
    except ArtifactError:
        return 0


class ExpertBuffer:
    """Lazy access to a folder of saved trajectories."""

    def __init__(self, folder: Path, num: int | None = None, max_cached: int = 16, epochs: int | None = None) -> None:
        """The first ``num`` experts (default: the finished ones); with ``epochs``, an expert
        trained only that far (its partial file) serves too."""
        self.folder = Path(folder)
        files = expert_files(self.folder)
        if epochs is not None:
            files = self._with_partials(num if num is not None else len(files), epochs)
        if num is not None:
            files = files[:num]
        if not files:
            raise ArtifactError(f"no expert trajectories in {self.folder}; run `meddistill experts` first")
        self.files = files
        self._check_widths()
        self.max_cached = max_cached  # paper-scale buffers do not fit in RAM all at once
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.files)

    def get(self, k: int) -> torch.Tensor:
        if k in self._cache:
            self._cache[k] = self._cache.pop(k)  # most recently used goes last
        else:
            if len(self._cache) >= self.max_cached:
                self._cache.pop(next(iter(self._cache)))
            self._cache[k] = load_trajectory(self._path(k))
        return self._cache[k]

    def _path(self, k: int) -> Path:
        path = self.files[k]
        if not path.exists() and ".partial" in path.name:  # finished meanwhile by another process
            path = self.files[k] = path.with_name(path.name.replace(".partial", ""))
        return path

    def _with_partials(self, num: int, epochs: int) -> list[Path]:
        files = []
        for k in range(num):
            done = expert_path(self.folder, k)
            part = partial_path(self.folder, k)
            if done.exists():
                files.append(done)
            elif part.exists() and trajectory_shape(part)[0] > epochs:
                files.append(part)
            else:
                break
        return files

    def _check_widths(self) -> None:
        """Every file holds as many parameters per epoch as ``meta.json`` says (if the folder has
        one) and as the first file: a damaged or foreign file is refused before it is read."""
        meta = self.folder / "meta.json"
        want = read_meta(meta).get("num_params") if meta.is_file() else None
        for path in self.files:
            width = trajectory_shape(path)[1]
            want = width if want is None else want
            if width != want:
                raise ArtifactError(
                    f"expert file {path} holds {width} parameters per epoch, not {want} as the other experts "
                    f"of {self.folder}; delete it to retrain it"
                )

    @property
    def num_epochs(self) -> int:
        """Epochs every expert of the buffer holds."""
        return min(trajectory_shape(f)[0] for f in self.files) - 1

    def digest(self, epochs: int) -> str:
        """A fingerprint of what a run reads: epochs 0..``epochs`` of every expert, bit for bit.
        Equal for a buffer trained further meanwhile; different for one trained again into
        other bits (another CPU, another torch)."""
        h = hashlib.sha256()
        for k in range(len(self)):
            path = self._path(k)
            with _reading_expert(path), safe_open(str(path), framework="pt") as f:
                rows = f.get_slice("trajectory")[: epochs + 1]  # only the rows hashed are read
            check_finite(path, rows)  # the rows a run reads: a NaN expert never enters a run
            h.update(rows.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]
