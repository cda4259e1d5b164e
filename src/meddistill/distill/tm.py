"""Trajectory matching (MTT) with progressive schedules (PTM) and overlap mitigation (DOM).

One engine serves ``mtt``, ``ptm``, ``ptm_nodom`` and ``datm``: they differ only in the
start-epoch schedule, whether DOM runs and whether labels are learnable soft labels.

Every random choice (expert, start epoch, minibatches, DSA seeds, DOM replacements) comes
from one ``torch.Generator`` whose state is checkpointed together with the images, the
learnable lr, the momentum buffers and the loss history, so ``--resume`` continues
exactly as the uninterrupted run would have (bit-for-bit on the same device).

An interrupt (Ctrl-C) can land anywhere, also halfway through an in-place update of the images
or a DOM replacement. The loop therefore keeps a copy of the state as it was at the start of
the current iteration (:meth:`TrajectoryMatching.snapshot`) and checkpoints that copy on
KeyboardInterrupt: the resumed run redoes the interrupted iteration from its start. The
iteration counter is stored inside the checkpoint's tensor file, so a checkpoint write cut
short (a second Ctrl-C) never pairs tensors of one iteration with the counter of another.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from meddistill.augment import dsa, for_dataset
from meddistill.distill.base import REFERENCE_EXPERT, DistillContext, distill_generator
from meddistill.distill.dom import (
    DOMConfig,
    class_diversity,
    cosine_matrix,
    max_overlap,
    replace_budget,
    select_overlapping,
)
from meddistill.distill.init import INITS, InitOptions, ReplaceInputs, make_start
from meddistill.distill.schedule import Schedule
from meddistill.errors import ArtifactError, RunStopped
from meddistill.experts import ExpertBuffer
from meddistill.health import LOG
from meddistill.nets import FlatParams, call_flat, create_model
from meddistill.synset import SynSet
from meddistill.utils import (
    append_jsonl,
    atomic_path,
    machine_info,
    read_jsonl,
    write_jsonl_atomic,
    write_text_atomic,
)

CKPT = "checkpoint.safetensors"
CKPT_META = "checkpoint.json"
RECENT = 25  # losses in the running median used to detect an exploding step


def checkpoint_iteration(run_dir: str | Path) -> int | None:
    """The iteration a run folder's checkpoint reached, read from the tensor file's header (what
    a resume reads); None without a tensor file, -1 when it cannot be read."""
    path = Path(run_dir) / CKPT
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            embedded = (f.metadata() or {}).get("meta")
        meta = json.loads(embedded if embedded is not None else (Path(run_dir) / CKPT_META).read_text())
        it = meta["it"]
    except (SafetensorError, OSError, ValueError, KeyError, TypeError):
        return -1
    return it if isinstance(it, int) and not isinstance(it, bool) and it >= 0 else -1


def normalised_distance(theta: torch.Tensor, start: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MTT's matching loss: ‖θ_N − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖²."""
    return ((theta - target) ** 2).sum() / ((start - target) ** 2).sum().clamp_min(1e-12)


RESTART = "rerun with --restart (in a bench grid: delete that run folder and rerun the grid)"


@dataclass
class TMState:
    images: torch.Tensor
    labels: torch.Tensor
    lr: torch.Tensor
    label_logits: torch.Tensor | None
    gen: torch.Generator
    used: torch.Tensor  # bool over the train split: real images already taken
    img_mom: torch.Tensor
    lr_mom: torch.Tensor
    lab_mom: torch.Tensor | None
    it: int = 0
    skipped: int = 0
    replaced: int = 0
    losses: list[float] = field(default_factory=list)
    # per image, every train index it was initialised or re-initialised from (None: a checkpoint
    # written before sources were recorded)
    sources: list[list[int]] | None = None


def schedule_epochs(schedule, settings) -> int:
    """The last expert epoch the matching reads: its schedule's last target, or the soft-label
    epoch ``max_start_epoch`` (DATM-style), whichever is later."""
    return max(schedule.epochs_needed(), settings.max_start_epoch)


def epochs_read(schedule, settings, experts_epochs: int) -> int:
    """The last expert epoch a run reads: :func:`schedule_epochs`, or all ``experts_epochs``
    when its DOM measures at the reference expert's final epoch (``dom.feature_epoch: last``)."""
    dom = getattr(settings, "dom", None)
    if dom is not None and dom.enabled and dom.feature_epoch == "last":
        return experts_epochs
    return schedule_epochs(schedule, settings)


class TrajectoryMatching:
    def __init__(
        self,
        ctx: DistillContext,
        settings: Any,
        schedule: Schedule,
        dom: DOMConfig | None = None,
        soft: Any = None,
    ) -> None:
        """``settings``: the method's :class:`~meddistill.distill.methods_tm.TMConfig` section;
        ``dom``: run Dynamic Overlap Mitigation with these settings; ``soft``: learn soft labels
        (a section with ``soft_filter``, ``soft_temperature`` and ``lr_label``)."""
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.d = settings
        self.ipc = ctx.cfg.distill.ipc
        self.dev = ctx.device
        self.schedule = schedule
        self.dom = dom
        self.soft = soft
        self.init = InitOptions.of(settings)
        schedule.check(self.cfg.experts.epochs)  # before any expert is trained
        need = epochs_read(schedule, settings, self.cfg.experts.epochs)
        # DOM's reference point: expert 0 at its final epoch, or at the last epoch matched
        last = dom is not None and dom.feature_epoch == "last"
        self.dom_epoch = self.cfg.experts.epochs if last else schedule_epochs(schedule, settings)
        self.buffer = ExpertBuffer(ctx.experts_folder(need), self.cfg.experts.num_experts, epochs=need)
        schedule.check(self.buffer.num_epochs)
        self.experts_epochs = need
        self.experts_digest = self.buffer.digest(need)
        # which machines distilled which iterations (a run resumed elsewhere names both)
        self.machine = machine_info(self.dev)
        self.segments: list[dict] = []
        self.segment_start = 0
        self.net = create_model(self.cfg.net, ctx.ds.shape, ctx.ds.num_classes).to(self.dev)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.spec = FlatParams.of(self.net)
        self.dsa_cfg = for_dataset(ctx.ds.info, self.cfg.dsa)
        self.run_dir = ctx.run_dir
        self.metrics_path = self.run_dir / LOG

    # ----------------------------------------------------------------- state
    def _expert_logits(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.buffer.get(REFERENCE_EXPERT)[self.d.max_start_epoch].to(self.dev)
        with torch.no_grad():
            return call_flat(self.net, self.spec, theta, x.to(self.dev)).float()

    def _expert_correct(self) -> torch.Tensor:
        """Which train images the soft-label expert classifies correctly (DATM's init filter)."""
        train = self.ctx.ds.train
        chunks = [train.images[i : i + 1024] for i in range(0, len(train), 1024)]
        pred = torch.cat([self._expert_logits(x).argmax(1).cpu() for x in chunks])
        return pred == train.labels

    def init_state(self) -> TMState:
        gen = distill_generator(self.ctx)
        eligible = self._expert_correct() if self.soft is not None and self.soft.soft_filter else None
        start = make_start(self.ctx, gen, self.init, eligible)
        images, labels = start.images, start.labels
        used = torch.zeros(len(self.ctx.ds.train), dtype=torch.bool)
        used[start.drawn] = True
        used[[i for src in start.sources for i in src]] = True  # a centroid's members are taken too
        images = images.to(self.dev).requires_grad_(True)
        logits = None
        if self.soft is not None:
            logits = (self._expert_logits(images.detach()) / self.soft.soft_temperature).requires_grad_(True)
        lr = torch.tensor(self.d.lr_init, device=self.dev).requires_grad_(True)
        return TMState(
            images,
            labels.to(self.dev),
            lr,
            logits,
            gen,
            used,
            torch.zeros_like(images),
            torch.zeros_like(lr),
            None if logits is None else torch.zeros_like(logits),
            sources=start.sources,
        )

    def save_checkpoint(self, st: TMState) -> None:
        tensors = {
            "images": st.images.detach().cpu(),
            "labels": st.labels.cpu(),
            "lr": st.lr.detach().cpu().reshape(1),
            "img_mom": st.img_mom.cpu(),
            "lr_mom": st.lr_mom.cpu().reshape(1),
            "used": st.used.to(torch.uint8),
            "gen_state": st.gen.get_state(),
            "losses": torch.tensor(st.losses, dtype=torch.float64),
        }
        if st.label_logits is not None:
            tensors["label_logits"] = st.label_logits.detach().cpu()
            tensors["lab_mom"] = st.lab_mom.cpu()
        meta = {
            "it": st.it,
            "skipped": st.skipped,
            "replaced": st.replaced,
            "config_hash": self.ctx.config_hash,
            "experts_digest": self.experts_digest,
            "experts_epochs": self.experts_epochs,
            "machines": self.machines(st.it),
            "sources": st.sources,
        }
        # the counters travel inside the tensor file (one atomic write); the JSON is a readable copy
        with atomic_path(self.run_dir / CKPT) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"meta": json.dumps(meta)})
        write_text_atomic(self.run_dir / CKPT_META, json.dumps(meta, indent=2))

    def _read_checkpoint(self) -> tuple[dict, dict[str, torch.Tensor]] | None:
        """(counters, tensors) of the checkpoint, or None if there is none; counters come from
        the tensor file itself (older checkpoints: from ``checkpoint.json``)."""
        path, meta_path = self.run_dir / CKPT, self.run_dir / CKPT_META
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                embedded = (f.metadata() or {}).get("meta")
                t = {k: f.get_tensor(k) for k in f.keys()}
            if embedded is None and not meta_path.exists():
                return None
            meta = json.loads(embedded if embedded is not None else meta_path.read_text())
        except (SafetensorError, OSError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"checkpoint in {self.run_dir} is unreadable ({exc}); {RESTART}") from None
        return meta, t

    def load_checkpoint(self) -> TMState | None:
        found = self._read_checkpoint()
        if found is None:
            return None
        meta, t = found
        if meta.get("config_hash") != self.ctx.config_hash:
            raise ArtifactError(f"checkpoint in {self.run_dir} belongs to another config; {RESTART}")
        if "experts_digest" in meta and meta["experts_digest"] != self._digest_of(meta):
            raise ArtifactError(
                f"checkpoint in {self.run_dir} was made with other expert trajectories than "
                f"{self.buffer.folder} now holds (trained again?); restore those or {RESTART}"
            )
        gen = torch.Generator()
        gen.set_state(t["gen_state"])
        logits = t.get("label_logits")
        st = TMState(
            t["images"].to(self.dev).requires_grad_(True),
            t["labels"].to(self.dev),
            t["lr"].reshape(()).to(self.dev).requires_grad_(True),
            None if logits is None else logits.to(self.dev).requires_grad_(True),
            gen,
            t["used"].bool(),
            t["img_mom"].to(self.dev),
            t["lr_mom"].reshape(()).to(self.dev),
            None if logits is None else t["lab_mom"].to(self.dev),
            it=int(meta["it"]),
            skipped=int(meta["skipped"]),
            replaced=int(meta["replaced"]),
            losses=t["losses"].tolist(),
            sources=meta.get("sources"),
        )
        if "machines" in meta:
            self.segments = [m for m in meta["machines"] if isinstance(m, dict)]
        else:  # a checkpoint written before machines were recorded
            self.segments = [{"unrecorded": True, "from_it": 0, "to_it": st.it}] if st.it > 0 else []
        # drop metric rows written after the checkpoint so the log has no duplicates
        rows = [r for r in read_jsonl(self.metrics_path) if r.get("it", -1) < st.it]
        write_jsonl_atomic(self.metrics_path, rows)
        return st

    def machines(self, upto: int) -> list[dict]:
        """The machines that ran iterations ``[from_it, to_it)``, this process's last, merged
        with the one before when it is the same machine."""
        done = [dict(m) for m in self.segments]
        if upto > self.segment_start:
            last = done[-1] if done else None
            same = last is not None and {k: v for k, v in last.items() if k not in ("from_it", "to_it")} == self.machine
            if same and last["to_it"] == self.segment_start:
                last["to_it"] = upto
            else:
                done.append({**self.machine, "from_it": self.segment_start, "to_it": upto})
        return done

    def _digest_of(self, meta: dict) -> str:
        """This buffer's digest over the expert epochs the checkpoint's digest covers."""
        epochs = meta.get("experts_epochs", self.experts_epochs)
        return self.experts_digest if epochs == self.experts_epochs else self.buffer.digest(int(epochs))

    @staticmethod
    def snapshot(st: TMState) -> TMState:
        """A copy of ``st`` that no later in-place update touches: the state to checkpoint if an
        interrupt lands in the middle of an iteration."""

        def copy(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.detach().clone()

        gen = torch.Generator(device=st.gen.device)
        gen.set_state(st.gen.get_state())
        return TMState(
            copy(st.images),
            copy(st.labels),
            copy(st.lr),
            copy(st.label_logits),
            gen,
            st.used.clone(),
            copy(st.img_mom),
            copy(st.lr_mom),
            copy(st.lab_mom),
            it=st.it,
            skipped=st.skipped,
            replaced=st.replaced,
            losses=list(st.losses),
            sources=None if st.sources is None else [list(s) for s in st.sources],
        )

    # ------------------------------------------------------------------ core
    def _endpoints(self, k: int, t: int, span: int) -> tuple[torch.Tensor, torch.Tensor]:
        traj = self.buffer.get(k)
        return traj[t].to(self.dev), traj[t + span].to(self.dev)

    def _targets(self, st: TMState, graph: bool) -> torch.Tensor:
        """Class ids, or the soft-label distributions (differentiable w.r.t. the logits with ``graph``)."""
        if st.label_logits is None:
            return st.labels
        return F.softmax(st.label_logits if graph else st.label_logits.detach(), 1)

    def _student_step(self, st: TMState, theta: torch.Tensor, idx, seed: int, y: torch.Tensor, graph: bool):
        """One student SGD step on the synthetic images ``idx``; with ``graph`` the result is
        differentiable w.r.t. theta and the leaves (images, lr, and the logits through ``y``)."""
        images = st.images if graph else st.images.detach()
        x = dsa(images[idx], seed, self.dsa_cfg)
        ce = F.cross_entropy(call_flat(self.net, self.spec, theta, x), y[idx])
        (g,) = torch.autograd.grad(ce, theta, create_graph=graph)
        return theta - (st.lr if graph else st.lr.detach()) * g

    @staticmethod
    def _batch(batches, i: int):
        return batches[i] if batches is not None else slice(None)

    def matching_loss(self, st: TMState, k: int, t: int, span: int, seeds: list[int], batches) -> torch.Tensor:
        """Unroll ``syn_steps`` student steps from expert ``k`` epoch ``t``; normalised distance."""
        start, target = self._endpoints(k, t, span)
        y = self._targets(st, graph=True)
        theta = start.clone().requires_grad_(True)
        for i, seed in enumerate(seeds):
            theta = self._student_step(st, theta, self._batch(batches, i), seed, y, graph=True)
        return normalised_distance(theta, start, target)

    def leaves(self, st: TMState) -> list[torch.Tensor]:
        return [st.images, st.lr] + ([st.label_logits] if st.label_logits is not None else [])

    def _unroll_detached(self, st: TMState, k: int, t: int, span: int, seeds: list[int], batches):
        """Memory-saving forward pass: only the flat student parameters of every step are kept
        (P floats each), no graph.  Returns (loss value, state for :meth:`_backward_stepwise`)."""
        start, target = self._endpoints(k, t, span)
        y = self._targets(st, graph=False)
        thetas = [start]
        for i, seed in enumerate(seeds):
            th = thetas[-1].detach().requires_grad_(True)
            thetas.append(self._student_step(st, th, self._batch(batches, i), seed, y, graph=False).detach())
        denom = ((start - target) ** 2).sum().clamp_min(1e-12)
        diff = thetas[-1] - target
        return float((diff**2).sum() / denom), (thetas, 2 * diff / denom)

    def _backward_stepwise(self, st: TMState, fwd, seeds: list[int], batches) -> tuple[torch.Tensor, ...]:
        """Memory-saving backward pass: recompute one step at a time with its graph and push the
        adjoint ``dL/dθ_i`` back through it, accumulating the leaves' gradients."""
        thetas, adj = fwd
        leaves = self.leaves(st)
        grads = [torch.zeros_like(x) for x in leaves]
        for i in reversed(range(len(seeds))):
            th = thetas[i].detach().requires_grad_(True)
            y = self._targets(st, graph=True)
            nxt = self._student_step(st, th, self._batch(batches, i), seeds[i], y, graph=True)
            outs = torch.autograd.grad(nxt, [th, *leaves], grad_outputs=adj, allow_unused=True)
            adj = outs[0]
            for acc, g in zip(grads, outs[1:], strict=True):
                if g is not None:
                    acc.add_(g)
        return tuple(grads)

    def matching_checkpointed(self, st: TMState, k: int, t: int, span: int, seeds: list[int], batches):
        """Memory-saving mode: the same loss and gradients as :meth:`matching_loss` + backprop,
        but the unroll is never held in memory at once; peak activation memory is that of one
        step, whatever ``syn_steps`` is, for about one extra forward/backward per step.
        Returns (loss value, gradients of the leaves)."""
        value, fwd = self._unroll_detached(st, k, t, span, seeds, batches)
        return value, self._backward_stepwise(st, fwd, seeds, batches)

    def _exploding(self, st: TMState, value: float) -> bool:
        if not math.isfinite(value):
            return True
        recent = st.losses[-RECENT:]
        if len(recent) < 5:
            return False
        med = sorted(recent)[len(recent) // 2]
        return value > self.d.explode_factor * med

    def step(self, st: TMState) -> dict:
        win = self.schedule.window(st.it)
        k = int(torch.randint(len(self.buffer), (1,), generator=st.gen))
        t = int(torch.randint(win.lo, win.hi, (1,), generator=st.gen))
        n = st.images.shape[0]
        bs = self.d.batch_syn if 0 < self.d.batch_syn < n else n
        seeds = torch.randint(2**62, (self.d.syn_steps,), generator=st.gen).tolist()
        batches = None
        if bs < n:
            batches = [torch.randperm(n, generator=st.gen)[:bs].to(self.dev) for _ in range(self.d.syn_steps)]
        if self.d.memory_saving:
            value, fwd = self._unroll_detached(st, k, t, win.span, seeds, batches)
        else:
            loss = self.matching_loss(st, k, t, win.span, seeds, batches)
            value = float(loss.detach())
        status = "ok"
        if self._exploding(st, value):
            status = "skipped"  # the backward pass (either mode) is never run for such a step
        else:
            if self.d.memory_saving:
                grads = self._backward_stepwise(st, fwd, seeds, batches)
            else:
                grads = torch.autograd.grad(loss, self.leaves(st))
            if not all(torch.isfinite(g).all() for g in grads):
                status = "skipped"
            else:
                status = self._apply(st, grads)
        if status != "skipped":
            st.losses.append(value)
        else:
            st.skipped += 1
        row = {
            "it": st.it,
            "stage": win.stage,
            "lo": win.lo,
            "hi": win.hi,
            "span": win.span,
            "expert": k,
            "start": t,
            "loss": value,
            "lr": float(st.lr.detach()),
            "status": status,
        }
        st.it += 1
        return row

    def _apply(self, st: TMState, grads: tuple[torch.Tensor, ...]) -> str:
        d = self.d
        g_img, g_lr = grads[0], grads[1]
        if d.max_grad_norm > 0:
            norm = g_img.norm()
            if norm > d.max_grad_norm:
                g_img = g_img * (d.max_grad_norm / norm)
        new_lr_mom = d.momentum * st.lr_mom + g_lr
        new_lr = st.lr.detach() - d.lr_lr * new_lr_mom
        status = "ok"
        with torch.no_grad():
            st.img_mom.mul_(d.momentum).add_(g_img)
            st.images.sub_(d.lr_img * st.img_mom)
            if not torch.isfinite(new_lr):
                st.lr_mom.zero_()
                status = "lr_held"
            else:  # trust region: the student lr changes by at most a factor 2 per step (stays > 0)
                old = st.lr.detach().clone()
                clamped = new_lr.clamp(old / 2, old * 2)
                if clamped != new_lr:
                    st.lr_mom.zero_()
                    status = "lr_clamped"
                else:
                    st.lr_mom.copy_(new_lr_mom)
                st.lr.copy_(clamped)
            if st.label_logits is not None:
                st.lab_mom.mul_(d.momentum).add_(grads[2])
                st.label_logits.sub_(self.soft.lr_label * st.lab_mom)
        return status

    # ------------------------------------------------------------------- DOM
    def dom_due(self, it: int) -> bool:
        """A DOM event after ``it`` iterations (every ``dom.every``, within ``[start, stop]`` of the run)."""
        dc = self.dom
        if dc is None:
            return False
        frac = it / max(1, self.d.iterations)
        fires = it > 0 and it % dc.every == 0
        return fires and dc.start <= frac <= dc.stop and self.ipc > 1

    def dom_features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features of ``images`` (one pass) at DOM's reference point: expert 0 at
        ``dom_epoch`` (``dom.feature_epoch``)."""
        theta = self.buffer.get(REFERENCE_EXPERT)[self.dom_epoch].to(self.dev)
        with torch.no_grad():
            return call_flat(self.net, self.spec, theta, images.to(self.dev), features=True)

    def _replacer(self, st: TMState, cls_idx: torch.Tensor):
        """A function making one replacement image of a class and its sources: by the run's
        init rule when that is shareable (:data:`~meddistill.distill.init.INITS`), else a random
        unused real image of the class (noise added when ``dom.noise`` > 0 or the class has no
        unused image left)."""
        dc, train = self.dom, self.ctx.ds.train
        replace = INITS.get(self.init.name).replace
        if replace is not None:
            images = None if self.ctx.cfg.dp.on else train.images  # under DP the split is sealed
            shape = tuple(st.images.shape[1:])
            return lambda: replace(ReplaceInputs(st.gen, images, cls_idx, st.used, self.init.k, shape))

        def real() -> tuple[torch.Tensor, list[int]]:
            free = ~st.used[cls_idx]
            exhausted = not bool(free.any())
            pool = torch.nonzero(torch.ones_like(free) if exhausted else free).view(-1)
            r = cls_idx[int(pool[int(torch.randint(len(pool), (1,), generator=st.gen))])]
            st.used[r] = True
            new = train.images[r].clone()
            if dc.noise > 0 or exhausted:
                new += max(dc.noise, 0.1) * torch.randn(new.shape, generator=st.gen)
            return new, [int(r)]

        return real

    @torch.no_grad()
    def dom_step(self, st: TMState) -> list[int]:
        """One DOM event: per class, the images :func:`~meddistill.distill.dom.select_overlapping`
        selects (pixel and reference-feature cosine over the thresholds) are re-initialised
        (:meth:`_replacer`: by the run's init rule, or from random unused real images of the
        class), their sources recorded and their momentum reset. Returns the replaced positions
        in the set, in order."""
        dc = self.dom
        images = st.images.detach()
        feats = self.dom_features(images)
        done: list[int] = []
        no_members = [torch.zeros(0, dtype=torch.long)] * self.ctx.ds.num_classes  # DP: no train labels
        for c, cls_idx in enumerate(no_members if self.ctx.cfg.dp.on else self.ctx.class_indices()):
            ids = torch.nonzero(st.labels == c).view(-1)
            sel = select_overlapping(
                cosine_matrix(images[ids]),
                cosine_matrix(feats[ids]),
                dc.pixel_threshold,
                dc.feature_threshold,
                replace_budget(dc, len(ids)),
            )
            if not sel:
                continue
            new_image = self._replacer(st, cls_idx)
            for j in sel:
                new, src = new_image()
                pos = int(ids[j])
                if st.sources is not None:
                    st.sources[pos] = st.sources[pos] + src
                st.images[pos] = new.to(self.dev)
                st.img_mom[pos] = 0
                if st.label_logits is not None:
                    st.label_logits[pos] = self._expert_logits(new.unsqueeze(0))[0]
                    st.lab_mom[pos] = 0
                done.append(pos)
        st.replaced += len(done)
        return done

    # ------------------------------------------------------------------- run
    def iteration(self, st: TMState, t0: float) -> dict:
        """One iteration: a matching step, DOM when due, and the metrics row (every ``log_every``)."""
        d = self.d
        row = self.step(st)
        if self.dom_due(st.it):
            ids = self.dom_step(st)
            row.update(dom_replaced=len(ids), dom_ids=ids)
        if st.it % self.cfg.distill.log_every == 0 or st.it == d.iterations or "dom_replaced" in row:
            imgs = st.images.detach()
            row.update(
                diversity=class_diversity(imgs, st.labels),
                max_overlap=max_overlap(imgs, st.labels),
                skipped_total=st.skipped,
                replaced_total=st.replaced,
                elapsed_s=round(time.monotonic() - t0, 3),
            )
            append_jsonl(self.metrics_path, row)
        return row

    def run(self) -> SynSet:
        # gradients on, whatever the caller's mode: an interrupt can land inside a no_grad
        # block's exit and leave gradients off in a process that then resumes the run
        with torch.enable_grad():
            return self._run()

    def _run(self) -> SynSet:
        st = self.load_checkpoint()
        if st is None:
            self.metrics_path.unlink(missing_ok=True)
            st = self.init_state()
        self.segment_start = st.it
        d, shared = self.d, self.cfg.distill
        stop = d.iterations if self.ctx.stop_at is None else min(d.iterations, self.ctx.stop_at)
        last_ckpt = time.monotonic()
        t0 = time.monotonic()
        bar = tqdm(total=d.iterations, initial=st.it, desc=f"distill {shared.method}", disable=not self.ctx.progress)
        safe = self.snapshot(st)  # consistent state to checkpoint if interrupted (see module doc)
        try:
            while st.it < stop:
                safe = self.snapshot(st)
                row = self.iteration(st, t0)
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.4g}", stage=row["stage"])
                if time.monotonic() - last_ckpt > shared.checkpoint_every_s:
                    self.save_checkpoint(st)
                    last_ckpt = time.monotonic()
        except KeyboardInterrupt:
            # ``st`` may be halfway through an update; ``safe`` is the start of this iteration.
            # A second Ctrl-C here aborts the write; the previous checkpoint then stays whole.
            self.save_checkpoint(safe)
            raise
        finally:
            bar.close()
        self.save_checkpoint(st)
        if st.it < d.iterations:
            raise RunStopped(f"distillation stopped at iteration {st.it}/{d.iterations}; run again to resume")
        soft = F.softmax(st.label_logits.detach(), 1) if st.label_logits is not None else None
        return self.ctx.make_synset(
            st.images.detach(),
            st.labels,
            lr=float(st.lr.detach()),
            soft_labels=soft,
            iterations=st.it,
            skipped=st.skipped,
            dom_replaced=st.replaced,
            machines=self.machines(st.it),
            init=self.init.name,
            **({} if st.sources is None else {"sources": st.sources}),  # None: resumed from an older checkpoint
        )
