"""Does a narrow evaluation net hide what a synthetic set contains? (issue 18, second finding)

Re-evaluates stored synthetic sets with ConvNet-D3 of several widths (the ``cpu`` profile
distils and evaluates at width 32; the paper's ConvNet is width 128), everything else as the
run's own config (instance norm, DSA, 300 epochs, the set's learned lr, val-only checkpoint
choice). Uses the Python API ``evaluate_images``: ``meddistill eval RUN_DIR --set net.width=128``
does not do this, because ``eval`` takes the net spec from the run's saved config.

A width equal to the run's own, with as many nets as its row, reuses the row's numbers.
Rows go to ``--store`` (one per run folder and width; finished ones are skipped), then a table
of val and test ACC per method and width is printed. Nothing here chooses a setting.

    MEDDISTILL_DATA=/work/shared/data/medmnist python benchmarks/eval_width.py \
        results/tm_accept_sqrt.jsonl --seeds 0 --widths 32,128 --nets 2
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

import torch
import yaml

from meddistill.cli import SEEDS, comma_list, names, one_line_errors, positive_int
from meddistill.config import config_from_dict
from meddistill.evaluate import evaluate_images
from meddistill.pipeline import load_data
from meddistill.synset import SynSet
from meddistill.utils import append_jsonl, read_jsonl, resolve_device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("source", help="a results store whose rows name run folders")
    ap.add_argument("--methods", type=names("a method"), default="random,herding,dm,mtt,ptm")
    ap.add_argument("--datasets", type=names("a dataset"), default="bloodmnist")
    ap.add_argument("--seeds", type=SEEDS, default="0")
    ap.add_argument("--widths", type=comma_list(int, lambda v: v >= 1, "a width of 1 or more"), default="32,128")
    ap.add_argument("--nets", type=positive_int, default=2)
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--store", default="results/eval_width.jsonl")
    args = ap.parse_args()
    if not Path(args.source).is_file():
        ap.error(f"no results store {args.source}")
    with one_line_errors(ap, "interrupted; finished rows are in the store, the same command resumes"):
        run(args)


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    methods, seeds, widths, dsets = args.methods, set(args.seeds), args.widths, set(args.datasets)
    src = [
        r
        for r in read_jsonl(args.source)
        if r["method"] in methods and r["seed"] in seeds and r["dataset"] in dsets and r.get("run_dir")
    ]
    done = {(r["run_dir"], r["width"]) for r in read_jsonl(args.store)}
    for width in widths:
        for r in src:
            if (r["run_dir"], width) in done:
                continue
            rd = Path(r["run_dir"])
            cfg = config_from_dict(yaml.safe_load((rd / "config.yaml").read_text()))
            cfg.net.width = width
            cfg.eval.num_nets = args.nets
            cfg.eval.nets = ["convnet"]
            syn = SynSet.load(rd)
            if width == r["config"]["net"]["width"] and len(r["runs"]) == args.nets:
                # the source row is this very evaluation (same protocol, nets and seeds): reuse it
                runs = [{"val_acc": x["val_acc"], "acc": x["test_acc"], "auc": x["test_auc"]} for x in r["runs"]]
            else:
                ds = load_data(cfg)
                dev = resolve_device(cfg.device)
                s = evaluate_images(syn.images, syn.targets(), ds, cfg, dev, lr=syn.lr, progress=False)
                runs = [{"val_acc": x.val_acc, "acc": x.test_acc, "auc": x.test_auc} for x in s.results]
            row = {
                "run_dir": str(rd),
                "dataset": r["dataset"],
                "method": r["method"],
                "ipc": r["ipc"],
                "seed": r["seed"],
                "width": width,
                "nets": args.nets,
                "eval_lr": syn.lr or cfg.eval.lr_default,
                "val_acc": statistics.mean(x["val_acc"] for x in runs),
                "acc": statistics.mean(x["acc"] for x in runs),
                "runs": runs,
            }
            append_jsonl(args.store, row)
            msg = f"{r['method']} s{r['seed']} width {width}: val {row['val_acc']:.4f} test {row['acc']:.4f}"
            print(msg, flush=True)
    rows = [r for r in read_jsonl(args.store) if r["run_dir"] in {x["run_dir"] for x in src}]
    tab: dict[tuple, list] = defaultdict(list)
    for r in rows:
        tab[(r["method"], r["width"])].append(r)
    head = " | ".join(f"width {w} val / test ACC" for w in widths)
    print(f"\n| method | sets | {head} |\n|---|---|" + "---|" * len(widths))
    for m in methods:
        cells = []
        n = 0
        for w in widths:
            rs = tab.get((m, w), [])
            n = max(n, len(rs))
            if rs:
                v = 100 * statistics.mean(x["val_acc"] for x in rs)
                t = 100 * statistics.mean(x["acc"] for x in rs)
                cells.append(f"{v:.2f} / {t:.2f}")
            else:
                cells.append("–")
        print(f"| {m} | {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
