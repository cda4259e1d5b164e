"""Train chosen experts of one dataset's buffer (the same trajectories ``train_experts`` makes).

``train_experts`` trains a buffer's experts one after another in one process; on a 2-core CPU
a large dataset's buffer (BloodMNIST: 8 × 20 epochs of 11,959 images) then keeps one core busy
while the other waits. Two of these, with disjoint ``--experts``, share the work; each expert
k is seeded by ``derive_seed(experts.seed, ..., k)`` and resumes from its per-epoch partial
file, so the files are identical to a single ``train_experts`` run (up to thread count).

    OMP_NUM_THREADS=1 python benchmarks/train_experts_subset.py bloodmnist --experts 0,1,2,3 &
    OMP_NUM_THREADS=1 python benchmarks/train_experts_subset.py bloodmnist --experts 7,6,5,4 &
"""

from __future__ import annotations

import argparse
import json

from meddistill.config import build_config
from meddistill.experts import expert_dir, expert_identity, train_one_expert
from meddistill.pipeline import load_data
from meddistill.utils import resolve_device, write_text_atomic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dataset")
    ap.add_argument("--experts", required=True, help="comma-separated expert indices, in order")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--experts-dir", default="experts")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    cfg = build_config(args.profile, None, args.set, dataset=args.dataset, experts_dir=args.experts_dir)
    ds = load_data(cfg)
    out = expert_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    meta = out / "meta.json"
    if meta.exists() and json.loads(meta.read_text()).get("identity") != expert_identity(cfg):
        raise SystemExit(f"{meta} describes different experts")
    if not meta.exists():  # train_experts writes the full meta (num_params, code version) later
        write_text_atomic(meta, json.dumps({"identity": expert_identity(cfg)}, indent=2, sort_keys=True))
    for k in (int(v) for v in args.experts.split(",")):
        path = out / f"expert_{k}.safetensors"
        if path.exists():
            continue
        info = train_one_expert(ds, cfg, k, path, resolve_device(cfg.device))
        print(f"{args.dataset} expert {k}: final val ACC {info['final_val_acc']:.4f}", flush=True)


if __name__ == "__main__":
    main()
