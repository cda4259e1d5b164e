"""MTT's expert-training loop (``buffer.py``) and synthetic-set evaluation (``utils.evaluate_synset``
with its ``utils.epoch`` helper), ported to meddistill's nets and data tensors so that
``benchmarks/reference_compare.py`` can run them on the same work as :mod:`meddistill.experts`
and :mod:`meddistill.evaluate`.

Reference: github.com/GeorgeCazenavette/mtt-distillation (``buffer.py``, ``utils.py``). Kept as
the reference has it, because that is what is being compared:

- the data path: a ``Dataset`` that returns one (image, label) pair per index, read through a
  ``DataLoader`` (``shuffle=True`` for training, ``num_workers=0``) that collates every batch
  with ``torch.stack``; in ``evaluate_synset`` the synthetic set is moved to the device first,
  so each item is indexed on the device;
- per batch (``epoch``): ``.float().to(device)``, the augmentation (training only), forward,
  ``nn.CrossEntropyLoss``, the accuracy through ``argmax`` of ``output.cpu().numpy()``, the
  loss through ``loss.item()`` (two host synchronisations per batch), then
  ``zero_grad``/``backward``/``step``; the evaluation passes of ``buffer.py`` run without
  ``torch.no_grad`` (as there), the final test pass of ``evaluate_synset`` with it;
- ``buffer.py``: ``SGD(lr_teacher, momentum=mom, weight_decay=l2)``; the parameters copied to
  the CPU as a list of per-parameter tensors at the start and after every epoch (one copy per
  tensor, see below); a full pass
  over the evaluation loader after every epoch; with ``decay``, lr x0.1 after epoch index
  ``train_epochs // 2 + 1`` by building a new optimizer (momentum buffers dropped);
- ``evaluate_synset``: ``SGD(lr_net, momentum=0.9, weight_decay=0.0005)``, ``Epoch + 1``
  training epochs, a new optimizer with lr x0.1 after epoch index ``Epoch // 2 + 1``, one test
  pass after the last epoch (no model selection); returns (net, train accuracies, test accuracy).

What differs from the reference:

- augmentation: :func:`meddistill.augment.dsa` instead of their ``DiffAugment`` with
  ``ParamDiffAug``. The op list (color, crop, cutout, flip, scale, rotate), the single-op mode
  and the parameters (scale 1.2, rotation 15 degrees, crop 0.125, cutout 0.5, brightness 1.0,
  saturation 2.0, contrast 0.5) are the same; the crop shifts by a continuous offset with
  ``grid_sample`` where theirs gathers pixels at an integer offset, and rotations turn the
  other way (the angle distribution is symmetric). Their unseeded call (``seed=-1``: draws
  from the global torch RNG, one op per batch) is kept by drawing each batch's DSA seed from
  the global torch RNG. Flip/rotate follow the dataset's modality (``augment.for_dataset``).
- nets: meddistill's nets (``create_model``), built after seeding the global torch RNG with a
  seed the caller gives (their ``get_network`` seeds it from the clock);
- data: MedMNIST splits as meddistill loads them (normalised tensors, no ZCA); the loaders
  take tensors instead of torchvision datasets; the test loader has ``num_workers=0`` (theirs
  2: worker processes only pay for decoding, which tensors do not need);
- the parameters are copied with ``p.detach().to("cpu", copy=True)``: the reference's
  ``p.detach().cpu()`` copies from a GPU, but on a CPU it returns the live tensor, so every
  stored epoch would alias the parameters SGD keeps updating (all equal to the last epoch);
- the trajectories stay in memory as the lists the reference builds; the reference pickles
  them with ``torch.save`` every ``save_interval`` experts, which is left out (meddistill
  stores safetensors), and so are the progress prints and the ImageNet / texture branches.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from meddistill.augment import DSAConfig, dsa

Augment = Callable[[torch.Tensor], torch.Tensor]
NetFactory = Callable[[int], nn.Module]  # expert index -> a fresh net (seeded by the caller)


class TensorPairs(Dataset):
    """The reference's ``TensorDataset``: one (image, label) pair per index."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images.detach().float()
        self.labels = labels.detach()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __len__(self) -> int:
        return self.images.shape[0]


def unseeded_dsa(cfg: DSAConfig | None) -> Augment | None:
    """DSA with a fresh seed per call drawn from the global torch RNG (the reference's ``seed=-1``)."""
    if cfg is None:
        return None

    def augment(x: torch.Tensor) -> torch.Tensor:
        return dsa(x, int(torch.randint(2**62, (1,))), cfg)

    return augment


def eval_loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128) -> DataLoader:
    """The evaluation loader the reference builds once in ``get_dataset`` (batch 128, in order)."""
    return DataLoader(TensorPairs(images, labels), batch_size=batch_size, shuffle=False, num_workers=0)


def run_epoch(
    mode: str,
    loader: DataLoader,
    net: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    criterion: nn.Module,
    device: torch.device,
    augment: Augment | None,
) -> tuple[float, float]:
    """The reference's ``epoch``: one pass over ``loader``, training when ``mode == "train"``;
    returns (mean loss, accuracy) over the pass."""
    loss_sum, correct, seen = 0.0, 0, 0
    net = net.to(device)
    if mode == "train":
        net.train()
    else:
        net.eval()
    for images, labels in loader:
        img = images.float().to(device)
        if augment is not None:
            img = augment(img)
        lab = labels.long().to(device)
        n = lab.shape[0]
        output = net(img)
        loss = criterion(output, lab)
        correct += int(np.sum(np.equal(np.argmax(output.cpu().data.numpy(), axis=-1), lab.cpu().data.numpy())))
        loss_sum += loss.item() * n
        seen += n
        if mode == "train":
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return loss_sum / seen, correct / seen


@dataclass(frozen=True)
class BufferArgs:
    """The settings of ``buffer.py`` that its loop reads."""

    num_experts: int
    train_epochs: int
    lr_teacher: float
    batch_train: int
    mom: float = 0.0
    l2: float = 0.0
    decay: bool = False


@dataclass
class Buffer:
    """What the loop produces: per expert, the per-epoch parameter lists (the reference's
    ``trajectories``), and the accuracy of each epoch's evaluation pass."""

    trajectories: list[list[list[torch.Tensor]]] = field(default_factory=list)
    eval_acc: list[list[float]] = field(default_factory=list)


def train_buffer(
    images: torch.Tensor,
    labels: torch.Tensor,
    evalloader: DataLoader,
    make_net: NetFactory,
    args: BufferArgs,
    device: torch.device,
    augment: Augment | None,
) -> Buffer:
    """The expert loop of ``buffer.py`` on (images, labels); ``evalloader`` is the loader it
    evaluates after every epoch (the reference: its test loader)."""
    criterion = nn.CrossEntropyLoss().to(device)
    pairs = TensorPairs(copy.deepcopy(images.detach()), copy.deepcopy(labels.detach()))
    trainloader = DataLoader(pairs, batch_size=args.batch_train, shuffle=True, num_workers=0)
    out = Buffer()
    for it in range(args.num_experts):
        teacher = make_net(it).to(device)
        teacher.train()
        lr = args.lr_teacher
        optim = torch.optim.SGD(teacher.parameters(), lr=lr, momentum=args.mom, weight_decay=args.l2)
        optim.zero_grad()
        timestamps = [[p.detach().to("cpu", copy=True) for p in teacher.parameters()]]
        accs: list[float] = []
        lr_schedule = [args.train_epochs // 2 + 1]
        for e in range(args.train_epochs):
            run_epoch("train", trainloader, teacher, optim, criterion, device, augment)
            _, acc = run_epoch("test", evalloader, teacher, None, criterion, device, None)
            accs.append(acc)
            timestamps.append([p.detach().to("cpu", copy=True) for p in teacher.parameters()])
            if e in lr_schedule and args.decay:
                lr *= 0.1
                optim = torch.optim.SGD(teacher.parameters(), lr=lr, momentum=args.mom, weight_decay=args.l2)
                optim.zero_grad()
        out.trajectories.append(timestamps)
        out.eval_acc.append(accs)
    return out


@dataclass(frozen=True)
class EvalArgs:
    """The settings of ``evaluate_synset`` (``args.lr_net``, ``args.epoch_eval_train``, ``args.batch_train``)."""

    lr_net: float
    epoch_eval_train: int
    batch_train: int = 256


def evaluate_synset(
    net: nn.Module,
    images_train: torch.Tensor,
    labels_train: torch.Tensor,
    testloader: DataLoader,
    args: EvalArgs,
    device: torch.device,
    augment: Augment | None,
) -> tuple[nn.Module, list[float], float]:
    """The reference's ``evaluate_synset``: train ``net`` on the set for ``epoch_eval_train + 1``
    epochs, lr x0.1 after epoch index ``epoch_eval_train // 2 + 1``, test once at the end.
    Returns (net, per-epoch train accuracy, test accuracy)."""
    net = net.to(device)
    images_train = images_train.to(device)
    labels_train = labels_train.to(device)
    lr = float(args.lr_net)
    epochs = int(args.epoch_eval_train)
    lr_schedule = [epochs // 2 + 1]
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
    criterion = nn.CrossEntropyLoss().to(device)
    trainloader = DataLoader(
        TensorPairs(images_train, labels_train), batch_size=args.batch_train, shuffle=True, num_workers=0
    )
    acc_train_list: list[float] = []
    acc_test = float("nan")
    for ep in range(epochs + 1):
        _, acc_train = run_epoch("train", trainloader, net, optimizer, criterion, device, augment)
        acc_train_list.append(acc_train)
        if ep == epochs:
            with torch.no_grad():
                _, acc_test = run_epoch("test", testloader, net, optimizer, criterion, device, None)
        if ep in lr_schedule:
            lr *= 0.1
            optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
    return net, acc_train_list, acc_test
