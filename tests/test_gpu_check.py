"""tools/gpu_check.py in its CPU mode (what CI runs): the JSON and Markdown it writes, part
(a)'s accuracies within tolerance (two CPU runs, which must also give the same set), and the
packages it loads: only torch, numpy, pyyaml, safetensors, tqdm, matplotlib (and what those
depend on or load on their own import) besides meddistill and the standard library."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "gpu_check.py"
ALLOWED = ("torch", "numpy", "PyYAML", "safetensors", "tqdm", "matplotlib")
NEVER = ("ray", "pydicom", "hypothesis", "pytest")

# runs the script as ``python gpu_check.py --out OUT --device cpu`` would, then reports its status
# and every module the process loaded
RUNNER = """
import json, runpy, sys
script, out = sys.argv[1], sys.argv[2]
sys.argv = [script, "--out", out, "--device", "cpu"]
try:
    runpy.run_path(script, run_name="__main__")
    status = 0
except SystemExit as exc:
    status = exc.code
print(json.dumps({"status": status, "modules": sorted(sys.modules)}))
"""


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("gpu_check")
    path = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(SCRIPT), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    result = json.loads((out / "gpu_check.json").read_text())
    return result, (out / "gpu_check.md").read_text(), report


def test_cpu_mode_passes_a_and_writes_b_and_c(cpu_run):
    result, md_text, report = cpu_run
    assert report["status"] == 0
    assert result["mode"] == "cpu" and result["reduced"] is True
    assert "two CPU runs" in result["note"]
    a = result["a"]
    assert a["pair"].startswith("cpu vs cpu") and [r["device"] for r in a["runs"]] == ["cpu", "cpu"]
    for r in a["runs"]:
        assert 50 < r["acc"] <= 100 and 50 < r["auc"] <= 100  # above the class prior
    assert abs(a["runs"][0]["acc"] - a["runs"][1]["acc"]) <= a["tolerance"]
    assert abs(a["runs"][0]["auc"] - a["runs"][1]["auc"]) <= a["tolerance"]
    assert a["identical_sets"] and a["passed"] and result["passed"]
    b = result["b"]
    assert [r["precision"] for r in b["rows"]] == ["fp32", "bf16"]
    assert all(r["img_per_s"] > 0 and r["images"] > 0 for r in b["rows"])
    c = result["c"]
    plan = result["plan"]
    assert [[r["ipc"], r["syn_steps"]] for r in c["rows"]] == plan["combos"]
    for r in c["rows"]:
        for mode in ("unrolled", "memory_saving"):
            assert r[mode]["status"] == "ok" and r[mode]["s_per_it"] > 0
            assert r[mode]["peak_mb"] is None or r[mode]["peak_mb"] >= 0
    assert "RSS" in c["memory"]
    # the Markdown: the CPU-mode notice, the verdict and one table row per run / precision / combo
    assert "No CUDA used" in md_text and "(a) cpu vs cpu" in md_text and "PASS" in md_text
    rows = [line for line in md_text.splitlines() if re.match(r"^\| [^-]", line)]
    headers = 3
    assert len(rows) == headers + len(a["runs"]) + len(b["rows"]) + len(c["rows"])


def _dependency_closure(names: tuple[str, ...]) -> set[str]:
    """The allowed distributions and everything they require (markers ignored, extras left out)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for req in requires:
            if re.search(r"extra\s*==", req):
                continue
            todo.append(re.match(r"[A-Za-z0-9._-]+", req).group(0))
    return seen


# the import names of ALLOWED, imported bare: what the allowed packages load by themselves here
BARE_IMPORT = (
    "import json, sys, torch, numpy, yaml, safetensors, tqdm, matplotlib; print(json.dumps(sorted(sys.modules)))"
)


def _loaded_by_allowed_imports(owners: dict[str, list[str]]) -> set[str]:
    """The distributions whose modules importing the allowed packages alone loads in this
    environment. Some imports are opportunistic, outside the declared requirements: torch
    imports ``opt_einsum`` (its ``opt-einsum`` extra, see torch/backends/opt_einsum) whenever it
    is installed, e.g. as a requirement of Opacus (the ``dp`` extra). Such a module is torch's,
    not something gpu_check chose to load."""
    proc = subprocess.run([sys.executable, "-c", BARE_IMPORT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    top = {m.split(".")[0] for m in json.loads(proc.stdout.strip().splitlines()[-1])}
    return {re.sub(r"[-_.]+", "-", d).lower() for name in top for d in owners.get(name, [])}


def test_cpu_mode_loads_only_the_allowed_packages(cpu_run):
    _, _, report = cpu_run
    top = {m.split(".")[0] for m in report["modules"]}
    assert not top & set(NEVER), f"gpu_check loaded {sorted(top & set(NEVER))}"
    owners = md.packages_distributions()
    allowed = _dependency_closure(ALLOWED) | _loaded_by_allowed_imports(owners)
    stdlib = set(sys.stdlib_module_names) | set(sys.builtin_module_names)
    foreign = {}
    for name in sorted(top - stdlib - {"meddistill", "cython_runtime"}):
        dists = {re.sub(r"[-_.]+", "-", d).lower() for d in owners.get(name, [])}
        if not dists and name.startswith("_"):
            continue  # interpreter and extension internals (__main__, _sysconfigdata_..., _cython_...)
        if not dists & allowed:
            foreign[name] = sorted(dists) or "not installed by any distribution"
    assert not foreign, f"gpu_check loaded packages outside {ALLOWED} and their dependencies: {foreign}"


def test_judge_fails_beyond_tolerance_or_on_differing_sets_in_a_determinism_check(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    gc = importlib.import_module("gpu_check")
    run = {"acc": 80.0, "auc": 90.0, "synset_hash": "a"}
    assert gc.judge([run, dict(run)], determinism=True)["passed"]
    far = {**run, "acc": 80.0 + gc.TOLERANCE + 0.1}
    assert not gc.judge([run, far], determinism=False)["passed"]
    assert not gc.judge([run, {**run, "auc": 90.0 - gc.TOLERANCE - 0.1}], determinism=False)["passed"]
    other_set = {**run, "synset_hash": "b"}
    assert gc.judge([run, other_set], determinism=False)["passed"]  # devices may round differently
    assert not gc.judge([run, other_set], determinism=True)["passed"]  # the same CPU twice may not
