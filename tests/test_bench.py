from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from meddistill.bench import expand, load_grid, run_grid, write_report
from meddistill.bench.report import aggregate, table
from meddistill.cli import main
from meddistill.errors import ConfigError
from meddistill.utils import read_jsonl

REPO = Path(__file__).resolve().parents[1]


def _grid(tmp_path, session_dirs) -> Path:
    p = tmp_path / "grid.yaml"
    p.write_text(
        "profile: tiny\n"
        "datasets: [breastmnist]\nipc: [1]\nmethods: [random, ptm]\nseeds: [0, 1]\n"
        f"store: {tmp_path / 'store.jsonl'}\nout_dir: {tmp_path / 'runs'}\n"
        f"experts_dir: {session_dirs['experts']}\n"
        "overrides: [eval.epochs=10, device=cpu]\n"
    )
    return p


def test_grid_runs_once_resumes_and_reports(tmp_path, session_dirs):
    grid = load_grid(_grid(tmp_path, session_dirs))
    cells = expand(grid)
    assert len(cells) == 2 * (1 + 2)  # seeds × (full + 2 methods)
    assert len({c.key for c in cells}) == len(cells)
    ran, done = run_grid(grid, progress=False, limit=2)  # a grid killed after two cells ...
    assert (ran, done) == (2, 0)
    ran, done = run_grid(grid, progress=False)  # ... picks up where it stopped
    assert (ran, done) == (4, 2)
    assert run_grid(grid, progress=False) == (0, 6)
    rows = read_jsonl(grid.store)
    assert len(rows) == 6 and all("cell_key" in r and "config" in r for r in rows)
    # a matching run's row carries its run health; a coreset, which logs no steps, none
    ptm = [r for r in rows if r["method"] == "ptm"]
    assert all(r["health"]["iterations"] == r["config"]["distill"]["ptm"]["iterations"] for r in ptm)
    assert all("health" not in r for r in rows if r["method"] == "random")
    # every row says what computed it (timings are only comparable on the same CPU)
    cap = torch.backends.cpu.get_cpu_capability()
    assert all(r["machine"]["cpu_capability"] == cap and r["machine"]["device"] == "cpu" for r in rows)
    written = write_report(grid.store, tmp_path / "rep", ["ptm", "random"])
    md = written["acc.md"].read_text()
    assert "| ptm |" in md and "full dataset" in md and "**" in md
    assert "\\toprule" in written["acc.tex"].read_text()
    assert "| breastmnist | 1 | ptm | 2 |" in written["health.md"].read_text()
    assert (tmp_path / "rep" / "acc_vs_ipc_breastmnist.png").exists()
    assert (tmp_path / "rep" / "grids_breastmnist_ipc1.png").exists()
    per_net = write_report(grid.store, tmp_path / "nets", None, "all")
    assert "convnet/acc.md" in per_net and (tmp_path / "nets" / "convnet" / "table_acc.md").exists()
    assert (tmp_path / "nets" / "grids_breastmnist_ipc1.png").exists()  # once, not per net
    assert not (tmp_path / "nets" / "convnet" / "grids_breastmnist_ipc1.png").exists()


def test_a_row_says_when_its_seconds_miss_earlier_work(tmp_path, session_dirs):
    grid = load_grid(_grid(tmp_path, session_dirs))
    run_grid(grid, progress=False, limit=3)
    assert not any(r.get("resumed") for r in read_jsonl(grid.store))
    Path(grid.store).unlink()  # the rows are lost; the run folders (sets, checkpoints) are kept
    run_grid(grid, progress=False, limit=3)
    rows = read_jsonl(grid.store)
    assert {r["method"]: bool(r.get("resumed")) for r in rows} == {"full": False, "ptm": True, "random": True}


def test_an_empty_run_folder_is_not_earlier_work(tmp_path, session_dirs):
    from meddistill.pipeline import run_dir_for

    grid = load_grid(_grid(tmp_path, session_dirs))
    ptm = next(c for c in expand(grid) if c.method == "ptm")
    run_dir_for(ptm.cfg).mkdir(parents=True)  # a process killed before its first checkpoint
    run_grid(grid, progress=False, limit=3)
    assert not any(r.get("resumed") for r in read_jsonl(grid.store))


def test_a_checkpoint_json_alone_is_not_earlier_work(tmp_path):
    # a resume reads checkpoint.safetensors; the JSON is a readable copy of its counters
    from meddistill.pipeline import holds_earlier_work

    (tmp_path / "checkpoint.json").write_text('{"it": 50}')
    assert not holds_earlier_work(tmp_path)
    (tmp_path / "checkpoint.safetensors").write_bytes(b"x")
    assert holds_earlier_work(tmp_path)


def test_table_marks_the_best_mean_and_reports_std_over_seeds():
    rows = [
        {"dataset": "d", "ipc": 1, "method": m, "seed": s, "acc_mean": a, "auc_mean": a}
        for m, s, a in [("a", 0, 0.5), ("a", 1, 0.7), ("b", 0, 0.65), ("b", 1, 0.65), ("full", 0, 0.9)]
    ]
    for r in rows:
        if r["method"] == "full":
            r["ipc"] = 0
    stats = aggregate(rows)
    assert stats[("d", 1, "a")].mean == pytest.approx(0.6) and stats[("d", 1, "a")].std == pytest.approx(0.1)
    md = table(stats, "md", ["a", "b"])
    assert "**65.0 ± 0.0**" in md and "| full dataset | 90.0 ± 0.0 (n=1) |" in md
    # a cell with fewer seeds than the rest (an unfinished grid) says so
    md = table(aggregate(rows[:-2] + rows[-1:]), "md", ["a", "b"])
    assert "| b | **65.0 ± 0.0 (n=1)** |" in md and "| a | 60.0 ± 10.0 |" in md


def test_shipped_grids_parse():
    for name in ("cpu", "paper", "tm_cpu", "tm_cpu_fixedlr", "bf16_experts"):
        g = load_grid(REPO / "configs" / "bench" / f"{name}.yaml")
        assert expand(g)


def test_bad_grid_key_and_executor(tmp_path, session_dirs):
    p = tmp_path / "g.yaml"
    p.write_text("datasets: [breastmnist]\nmethodz: [ptm]\n")
    with pytest.raises(ConfigError, match="unknown grid keys \\['methodz'\\]"):
        load_grid(p)
    grid = load_grid(_grid(tmp_path, session_dirs))
    with pytest.raises(ConfigError, match="unknown executor"):
        run_grid(grid, executor="slurm", progress=False)


def test_report_cli_writes_one_table_per_net(tmp_path, capsys):
    store = tmp_path / "s.jsonl"
    rows = []
    for m, s, a in [("a", 0, 0.5), ("a", 1, 0.7), ("b", 0, 0.65)]:
        nets = {n: {"acc_mean": a + d, "auc_mean": a} for n, d in (("convnet", 0.0), ("vgg11", 0.1))}
        rows.append({"dataset": "d", "ipc": 1, "method": m, "seed": s, "acc_mean": a, "auc_mean": a, "per_net": nets})
    store.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["report", str(store), "--out", str(tmp_path / "rep"), "--net", "all", "--order", "a,b"]) == 0
    out = capsys.readouterr().out
    assert out.count("| method | d ipc=1 |") == 2
    assert "| a | 60.0 ± 10.0 |" in out and "| a | 70.0 ± 10.0 |" in out
    assert (tmp_path / "rep" / "vgg11" / "table_acc.tex").exists()


def test_report_cli_on_missing_store(tmp_path, capsys):
    assert main(["report", str(tmp_path / "none.jsonl")]) == 2
    assert "no results in" in capsys.readouterr().err


def test_ray_executor_gives_the_same_rows_as_local(tmp_path, session_dirs):
    ray = pytest.importorskip("ray")
    grid = load_grid(_grid(tmp_path, session_dirs))
    grid.seeds = [0]
    run_grid(grid, progress=False)
    local = _rows(grid.store)
    grid.store, grid.out_dir = str(tmp_path / "ray.jsonl"), str(tmp_path / "runs_ray")
    assert run_grid(grid, executor="ray", progress=False) == (3, 0)
    assert _rows(grid.store) == local
    assert not ray.is_initialized()  # the local cluster the run started is stopped


@pytest.mark.parametrize("grace", [3.0, 0.0])
def test_ctrl_c_on_ray_lets_running_cells_checkpoint_and_starts_no_more(grace, tmp_path, session_dirs, monkeypatch):
    # Ctrl-C used to leave the cluster's cells running (to their end) and start the queued ones;
    # with no grace, the forced stop was then dropped while the first cancel was on its way
    import os
    import signal
    import threading
    import time

    import torch

    ray = pytest.importorskip("ray")
    from meddistill.bench.executors import run_ray
    from tests.pool_cells import first_checkpoints_second_ignores_ctrl_c

    grid = load_grid(_grid(tmp_path, session_dirs))
    grid.full, grid.methods, grid.seeds = False, ["random"], list(range(6))
    flags = tmp_path / "flags"
    flags.mkdir()
    monkeypatch.setenv("MEDDISTILL_TEST_POOL", str(flags))  # the local cluster's workers inherit it
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # one CPU per task

    def ctrl_c_once_both_run() -> None:  # the first checkpoints on Ctrl-C, the second ignores it
        deadline = time.monotonic() + 60
        while len(list(flags.glob("started-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    ray.shutdown()  # a cluster another test left would lack this test's environment
    ray.init(num_cpus=2, log_to_driver=False)  # two cells at once, on any machine
    try:
        threading.Thread(target=ctrl_c_once_both_run, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            run_ray(expand(grid), Path(grid.store), False, grace=grace, cell_fn=first_checkpoints_second_ignores_ctrl_c)
        assert (flags / "checkpointed").exists() or not grace  # with no grace it may be stopped first
        beat = (flags / "alive").stat().st_mtime
        time.sleep(1.5)
        assert (flags / "alive").stat().st_mtime == beat  # the cell that ignored Ctrl-C was stopped
        assert len(list(flags.glob("started-*"))) == 2  # no queued cell started
    finally:
        ray.shutdown()


def test_a_ray_address_where_nothing_listens_is_a_one_line_error(tmp_path, session_dirs):
    # Ray retried it for minutes, printing its own warnings
    import time

    pytest.importorskip("ray")
    grid = load_grid(_grid(tmp_path, session_dirs))
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"no Ray cluster answers at 127\.0\.0\.1:1 .*check --address"):
        run_grid(grid, executor="ray", address="127.0.0.1:1", progress=False)
    assert time.monotonic() - t0 < 30


def _rows(store) -> dict[str, dict]:
    rows = {r["cell_key"]: r for r in read_jsonl(store)}
    for r in rows.values():
        r.pop("seconds")
        r.pop("run_dir")
        r.pop("machine")  # the thread count differs between executors
        r.pop("distill_machines", None)  # and so does the one each distillation ran with
        r.pop("experts_trained", None)  # one process trains experts in its first cell, a pool before
    return rows


def test_worker_pool_gives_the_same_rows_as_local(tmp_path, session_dirs):
    import torch

    grid = load_grid(_grid(tmp_path, session_dirs))
    grid.seeds = [0]
    run_grid(grid, progress=False)
    local = _rows(grid.store)
    grid.store, grid.out_dir = str(tmp_path / "pool.jsonl"), str(tmp_path / "runs_pool")
    # same thread count as this process, so the float reduction order (and every number) is the same
    assert run_grid(grid, progress=False, workers=2, threads=torch.get_num_threads()) == (3, 0)
    assert _rows(grid.store) == local
    with pytest.raises(ConfigError, match="workers must be at least 1"):
        run_grid(grid, progress=False, workers=0)


def test_ctrl_c_stops_a_worker_pool_without_starting_or_waiting_for_more_cells(tmp_path, session_dirs):
    # the pool used to start the cells queued to it and wait for them (hours for a matching cell)
    import time

    from meddistill.bench.executors import run_pool

    grid = load_grid(_grid(tmp_path, session_dirs))
    grid.full, grid.seeds = False, [0, 1, 2]
    grid.method_overrides = {"ptm": ["distill.ptm.iterations=5000"]}  # minutes each
    cells = sorted(expand(grid), key=lambda c: c.method != "random")  # a quick cell first

    def ctrl_c(row):
        raise KeyboardInterrupt

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_pool(cells, Path(grid.store), False, 2, 1, on_row=ctrl_c, grace=0)
    assert time.monotonic() - t0 < 90
    assert len(list(Path(grid.out_dir).rglob("synset.npz"))) <= 2  # no PTM cell ran to its end


def test_ctrl_c_starts_no_queued_cell(tmp_path, session_dirs, monkeypatch):
    # a worker whose cell ended on Ctrl-C used to take the cell the pool had queued to it
    import threading
    import time

    from meddistill.bench.executors import run_pool
    from tests.pool_cells import until_stopped

    grid = load_grid(_grid(tmp_path, session_dirs))
    grid.full, grid.methods, grid.seeds = False, ["random"], list(range(6))
    flags = tmp_path / "flags"
    flags.mkdir()
    monkeypatch.setenv("MEDDISTILL_TEST_POOL", str(flags))  # spawned workers inherit it

    def ctrl_c_once_both_workers_run() -> None:
        deadline = time.monotonic() + 120
        while len(list(flags.glob("started-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        (flags / "stop").touch()

    threading.Thread(target=ctrl_c_once_both_workers_run, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run_pool(expand(grid), Path(grid.store), False, 2, 1, grace=5, cell_fn=until_stopped)
    assert len(list(flags.glob("started-*"))) == 2


def test_ctrl_c_beside_an_idle_worker_lets_the_running_cell_write_its_checkpoint(tmp_path, session_dirs, monkeypatch):
    # the idle worker died of the SIGINT in its queue read; the pool then killed the busy one at once
    import multiprocessing
    import os
    import signal
    import threading
    import time

    from meddistill.bench.executors import run_pool
    from tests.pool_cells import checkpoints_on_ctrl_c

    grid = load_grid(_grid(tmp_path, session_dirs))
    grid.full, grid.methods, grid.seeds = False, ["random"], [0, 1]
    flags = tmp_path / "flags"
    flags.mkdir()
    monkeypatch.setenv("MEDDISTILL_TEST_POOL", str(flags))

    def ctrl_c_to_the_workers() -> None:
        deadline = time.monotonic() + 120
        while not list(flags.glob("started-*")) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(1.0)  # seed 0's worker is idle by now
        for p in multiprocessing.active_children():
            os.kill(p.pid, signal.SIGINT)

    threading.Thread(target=ctrl_c_to_the_workers, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run_pool(expand(grid), Path(grid.store), False, 2, 1, grace=10, cell_fn=checkpoints_on_ctrl_c)
    assert (flags / "checkpointed").exists()


def test_ctrl_c_while_a_worker_is_still_starting_does_not_break_the_pool(tmp_path, session_dirs):
    # a worker still importing (before its initializer ignores SIGINT) died of a Ctrl-C, and the
    # pool, seeing a worker die, raised BrokenProcessPool and killed the others at once
    import multiprocessing
    import os
    import signal
    import threading
    import time

    from meddistill.bench.executors import run_pool
    from tests.pool_cells import returns_key

    grid = load_grid(_grid(tmp_path, session_dirs))
    grid.full, grid.methods, grid.seeds = False, ["random"], [0, 1, 2, 3]
    done = threading.Event()
    hit: set[int] = set()

    def ctrl_c_each_new_worker() -> None:
        while not done.is_set():
            for p in multiprocessing.active_children():
                if p.pid and p.pid not in hit:
                    hit.add(p.pid)
                    os.kill(p.pid, signal.SIGINT)
            time.sleep(0.001)

    threading.Thread(target=ctrl_c_each_new_worker, daemon=True).start()
    try:
        n = run_pool(expand(grid), Path(grid.store), False, 2, 1, cell_fn=returns_key)
    finally:
        done.set()
    assert hit and n == 4


def test_a_ctrl_c_during_a_submit_leaves_no_call_to_start():
    # the call's future was lost (KeyboardInterrupt raised before it was recorded), so the
    # pool's stop neither cancelled nor waited for it: its cell could still start
    import os
    import signal
    from concurrent.futures import Future
    from types import SimpleNamespace

    from meddistill.bench.executors import _stop_pool, _submit

    class Pool:
        def __init__(self) -> None:
            self._processes: dict = {}
            self._pending_work_items: dict = {}

        def submit(self, fn, *args) -> Future:
            f = Future()
            self._pending_work_items[0] = SimpleNamespace(future=f)
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the pool spawns a worker
            return f

    pool, futures = Pool(), []
    with pytest.raises(KeyboardInterrupt):
        _submit(pool, futures, print)
    _stop_pool(pool, futures, grace=0)
    assert pool._pending_work_items[0].future.cancelled()


@pytest.mark.parametrize(
    "text,msg",
    [
        ("ipc_overrides:\n  one: [distill.mtt.lr_img=10]\n", "ipc_overrides has key 'one'; its keys are ipc values"),
        ("ipc_overrides:\n  1.5: [distill.mtt.lr_img=10]\n", "ipc_overrides has key 1.5"),
        ("method_overrides: [distill.dc.iterations=20]\n", "method_overrides must be a mapping"),
        ("method_overrides:\n  dc: 20\n", "method_overrides['dc'] must be a list of key=value strings"),
        ("methods: [ptm, ptmm]\n", "unknown method 'ptmm'"),
        ("method_overrides:\n  dcc: [distill.dc.iterations=20]\n", "unknown method 'dcc'"),
        ("datasets: [breastmnist, cifar10]\n", "unknown dataset 'cifar10'"),
        ("datasets: [chestmnist]\n", "chestmnist is multi-label"),
        ("dataset_overrides:\n  nope: [seed=1]\n", "unknown dataset 'nope'"),
        ("eval_nets: [convnet, alexnet]\n", "unknown net 'alexnet'"),
        ("ipc: [1, two]\n", "ipc must be integers"),
        ("profile: huge\n", "unknown profile 'huge'"),
        ("", "g.yaml is empty; a grid names its datasets"),  # ran a default cell
        ("# nothing yet\n", "g.yaml is empty"),
        ("datasets: []\nmethods: [random]\n", "datasets empty: the grid has no cell"),  # exit 0, 0 cells
        ("full: false\nseeds: []\nipc: []\n", "seeds, ipc empty"),
        # overrides that set no cell: silently ignored before
        ("ipc: [10, 50]\nipc_overrides:\n  5: [seed=1]\n", "ipc_overrides names 5, not in the grid (10, 50"),
        ("methods: [mtt]\nmethod_overrides:\n  ptm: [seed=1]\n", "method_overrides names ptm, not in the grid"),
        ("full: false\nmethod_overrides:\n  full: [seed=1]\n", "method_overrides names full, not in the grid"),
        ("datasets: [bloodmnist]\ndataset_overrides:\n  breast: [seed=1]\n", "dataset_overrides names breastmnist"),
    ],
)
def test_grid_mistakes_are_found_when_the_grid_is_loaded(tmp_path, text, msg):
    p = tmp_path / "g.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(msg)):
        load_grid(p)


def test_grid_dataset_names_become_canonical(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text("profile: tiny\ndatasets: [BREAST]\nmethods: [random]\ndataset_overrides:\n  Breast: [seed=1]\n")
    grid = load_grid(p)
    assert grid.datasets == ["breastmnist"] and grid.dataset_overrides == {"breastmnist": ["seed=1"]}
    assert {c.cfg.dataset for c in expand(grid)} == {"breastmnist"}


def test_negative_limit_is_rejected(tmp_path, session_dirs):
    grid = load_grid(_grid(tmp_path, session_dirs))
    with pytest.raises(ConfigError, match="limit must be a non-negative number of cells, got -1"):
        run_grid(grid, progress=False, limit=-1)
    assert not Path(grid.store).exists()


def _row(**kw):
    return {"dataset": "d", "ipc": 1, "method": "a", "seed": 0, "acc_mean": 0.5, "auc_mean": 0.5, **kw}


@pytest.mark.parametrize(
    "rows,argv,msg",
    [
        ([{"dataset": "d", "ipc": 1, "method": "a", "seed": 0}], [], "row 1 lacks acc_mean, auc_mean"),
        ([_row(), [1, 2]], [], "row 2 is not a JSON object"),
        ([_row(ipc="one")], [], "row 1 has a non-numeric ipc"),
        ([_row(method=None)], [], "row 1 has a dataset or method that is not a name"),  # was an internal error
        ([_row(dataset=5)], [], "row 1 has a dataset or method that is not a name"),
        ([_row(), _row(seed=1, acc_mean=87.5)], [], "row 2 has an accuracy or AUC outside 0-1"),  # shown as 8750.0
        ([_row(per_net={"convnet": {"acc_mean": 0.5, "auc_mean": -0.1}})], [], "outside 0-1"),
        ([_row(per_net={"convnet": {"acc_mean": 0.5}})], [], "per_net entry without acc_mean/auc_mean"),
        (
            [_row(per_net={"convnet": {"acc_mean": 0.5, "auc_mean": 0.5}})],
            ["--net", "foo"],
            "evaluated with net 'foo'; nets present: convnet",
        ),
        ([_row()], ["--net", "all"], "nets present: none"),
        ([_row()], ["--order", "a,foo"], "--order names foo, not a method of"),  # was ignored
    ],
)
def test_report_of_bad_rows_or_an_absent_net_is_one_line(tmp_path, capsys, rows, argv, msg):
    store = tmp_path / "s.jsonl"
    store.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["report", str(store), "--out", str(tmp_path / "rep"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("meddistill: error: ") and msg in err and err.count("\n") == 1
    assert not (tmp_path / "rep").exists()  # no empty tables


@pytest.mark.parametrize("argv", [["report", "s.jsonl", "--order", ""], ["eval", "runs/x", "--nets", ""]])
def test_an_empty_name_list_is_refused_not_ignored(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "has an empty item" in capsys.readouterr().err


def test_pool_trains_each_expert_buffer_only_to_the_last_epoch_its_cells_read(tmp_path):
    from meddistill.bench.executors import _distinct_experts
    from meddistill.distill import get_spec

    p = tmp_path / "grid.yaml"
    p.write_text(
        "profile: tiny\ndatasets: [breastmnist]\nipc: [1]\nmethods: [random, mtt, ptm]\nseeds: [0]\nfull: false\n"
        f"store: {tmp_path / 's.jsonl'}\nout_dir: {tmp_path / 'runs'}\nexperts_dir: {tmp_path / 'experts'}\n"
        "method_overrides:\n  ptm: [distill.ptm.max_start_epoch=1, distill.ptm.expert_epochs=1]\n"
        "overrides: [experts.epochs=6, distill.mtt.max_start_epoch=3, distill.mtt.expert_epochs=2]\n"
    )
    cells = expand(load_grid(p))
    tasks = _distinct_experts(cells)
    assert len(tasks) == 1  # mtt and ptm share one buffer; random reads none
    reads = {c.method: get_spec(c.method).experts_read(c.cfg) for c in cells if get_spec(c.method).needs_experts}
    assert reads["mtt"] == 4  # start epochs 0-2, two epochs on: the last target is epoch 4
    assert tasks[0][1] == max(reads.values()) < 6


def test_overrides_keyed_by_what_the_grid_runs_are_accepted(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text(
        "profile: tiny\ndatasets: [breastmnist]\nipc: [1, 2]\nmethods: [random]\n"
        "ipc_overrides:\n  2: [seed=1]\nmethod_overrides:\n  random: [seed=1]\n  full: [seed=1]\n"
    )
    grid = load_grid(p)
    assert grid.ipc_overrides == {2: ["seed=1"]} and set(grid.method_overrides) == {"random", "full"}


def test_an_ipc_1_override_is_accepted_where_it_sets_only_the_full_data_cells(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text(
        "profile: tiny\ndatasets: [breastmnist]\nipc: [10]\nmethods: [random]\n"
        "ipc_overrides:\n  1: [eval.full_epochs=7]\n"  # refused before: "names 1, not in the grid"
    )
    full = [c for c in expand(load_grid(p)) if c.method == "full"]
    assert full and all(c.cfg.eval.full_epochs == 7 for c in full)
