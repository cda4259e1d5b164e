"""Own-image loading cost: decoding + caching an image folder (first run) vs the cached run.

Writes the 17,092 BloodMNIST images (28x28 RGB, all three splits) as PNG files into a temporary
``<split>/<class>/`` folder, then times ``load_data`` twice with an empty cache: the first run
lists, hashes, decodes and caches the images, the second lists and hashes the files and reads
the cache; and times listing and hashing alone (what every identity of the data costs).
BloodMNIST holds byte-identical images in two classes, so the folder is read with
``data.duplicates=keep`` (as the npz has them).
Also checks that the folder gives the npz file's tensors bit for bit. Prints a Markdown table.

    MEDDISTILL_DATA=../shared/data/medmnist python benchmarks/perf_decode.py            # all 17,092
    MEDDISTILL_DATA=../shared/data/medmnist python benchmarks/perf_decode.py --limit 500  # a quick check
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from meddistill.build import build_config
from meddistill.data.cache import fingerprint
from meddistill.data.listing import scan_folder
from meddistill.data.loader import SPLITS, resolve_file
from meddistill.pipeline import load_data


def write_pngs(npz: Path, root: Path, limit: int | None) -> dict[str, int]:
    """``root/<split>/<class>/<index>.png``; the first ``limit`` images of every split."""
    counts = {}
    with np.load(npz, allow_pickle=False) as z:
        for s in SPLITS:
            images, labels = z[f"{s}_images"][:limit], z[f"{s}_labels"][:limit, 0]
            for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
                p = root / s / f"class{lab}" / f"{i:05d}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(p)
            counts[s] = len(labels)
    return counts


def timed_load(cfg) -> tuple[float, object]:
    t = time.perf_counter()
    ds = load_data(cfg, progress=False)
    return time.perf_counter() - t, ds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="bloodmnist", help="MedMNIST subset whose npz is written as PNGs")
    ap.add_argument("--limit", type=int, help="first N images of each split (default: all)")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--keep", help="write the PNGs and the cache here instead of a temporary folder")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        folder, cache = work / args.dataset, work / "cache"
        t = time.perf_counter()
        counts = write_pngs(resolve_file(args.dataset, 28, download_ok=False), folder, args.limit)
        t_write = time.perf_counter() - t
        flags = {"data.cache_dir": str(cache), "size": args.size, "data.duplicates": "keep"}
        cfg = build_config("cpu", dataset=str(folder), device="cpu", **flags)
        t_first, ds = timed_load(cfg)
        t_cached, ds2 = timed_load(cfg)
        t = time.perf_counter()
        listing = scan_folder(folder)
        t_list = time.perf_counter() - t
        fingerprint(listing)
        t_hash = time.perf_counter() - t - t_list
        same = all(torch.equal(getattr(ds, s).images, getattr(ds2, s).images) for s in SPLITS)
        n = sum(counts.values())
        exact = ""
        if args.limit is None and args.size == 28:
            ref = load_data(build_config("cpu", dataset=args.dataset, device="cpu"))
            exact = str(all(torch.equal(getattr(ds, s).images, getattr(ref, s).images) for s in SPLITS))
        cache_mb = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 1e6
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {n} PNGs ({counts}), size {args.size}")
        print("| images | write PNGs s | first load (hash + decode + cache) s | cached load s | cache MB |"
              " cached = first | = npz |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        print(f"| {n} | {t_write:.1f} | {t_first:.2f} | {t_cached:.2f} | {cache_mb:.1f} | {same} | {exact or 'n/a'} |")
        mb = sum(p.stat().st_size for p in folder.rglob("*.png")) / 1e6
        print(f"\nlisting {n} files: {t_list:.2f} s; hashing them ({mb:.1f} MB): {t_hash:.2f} s")


if __name__ == "__main__":
    main()
