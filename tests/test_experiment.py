"""The AL loop end to end (tiny settings), resuming, bad configuration, CLI and report."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from mqnet_fast.cli import main
from mqnet_fast.data import load_digits
from mqnet_fast.experiment import ConfigError, Experiment, ExperimentConfig, check_selection
from mqnet_fast.strategies import STRATEGIES
from mqnet_fast.io import RunFileError, save_sealed
from testing import checkpoint_state, strip_timing, tiny_config

tiny, _strip = tiny_config, strip_timing


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_end_to_end_every_strategy(tmp_path, digits):
    experiment = Experiment(tiny(), tmp_path / "run", data=digits)
    records = experiment.run()
    assert len(records) == len(STRATEGIES) * 3
    split = experiment.splits[0]
    for name in STRATEGIES:
        run = tmp_path / "run" / name / "seed0"
        queries = json.loads((run / "queries.json").read_text())
        assert len(queries) == 2 and all(len(q) == 12 for q in queries)
        flat = np.array(queries[0] + queries[1])
        assert len(np.unique(flat)) == 24 and np.isin(flat, split.pool).all()
        assert not np.isin(flat, split.initial_labeled).any()
        metrics = json.loads((run / "metrics.json").read_text())
        assert [m["round"] for m in metrics] == [0, 1, 2]
        for m, q in zip(metrics, queries):
            assert m["query_in"] == split.is_in[q].sum() and m["query_in"] + m["query_ood"] == 12
        assert metrics[2]["labeled_in"] + metrics[2]["labeled_ood"] == 12 * 3
        assert 0.0 <= metrics[2]["test_accuracy"] <= 1.0
    mq = json.loads((tmp_path / "run" / "mqnet" / "seed0" / "metrics.json").read_text())
    for record in mq[:2]:  # Phi trains (2 epochs of 5 steps) on a query with ranking signal: an IN example
        assert record["meta_steps"] == (2 * 5 if record["query_in"] > 0 else 0) and "meta_rank_accuracy" in record
    # round 0 is shared: by default (loss_module "all") every strategy trained the same first model
    first = [r for r in records if r["round"] == 0]
    assert {r["target_recipe"] for r in first} == {"resnet-loss-module"}
    assert len({(r["test_accuracy"], r["train_loss"]) for r in first}) == 1
    import pandas as pd

    frame = pd.read_csv(tmp_path / "run" / "results.csv")
    assert len(frame) == len(STRATEGIES) * 3 and set(frame.strategy) == set(STRATEGIES)


def test_resume_after_interrupt_gives_the_same_results(tmp_path, digits):
    config = tiny(strategies=["mqnet", "badge", "eaoa"], rounds=3)  # eaoa: k and the last query in its state
    whole = Experiment(config, tmp_path / "whole", data=digits).run()
    Experiment(config, tmp_path / "cut", data=digits).run(stop_after_rounds=2)
    partial = json.loads((tmp_path / "cut" / "mqnet" / "seed0" / "metrics.json").read_text())
    assert len(partial) == 2
    resumed = Experiment(config, tmp_path / "cut", data=digits).run()  # a new process would do the same
    assert _strip(resumed) == _strip(whole)
    for name in ("mqnet", "badge", "eaoa"):
        a = json.loads((tmp_path / "whole" / name / "seed0" / "queries.json").read_text())
        b = json.loads((tmp_path / "cut" / name / "seed0" / "queries.json").read_text())
        assert a == b
    phi_a = checkpoint_state(tmp_path / "whole" / "mqnet" / "seed0" / "checkpoint.pt")["strategy"]
    phi_b = checkpoint_state(tmp_path / "cut" / "mqnet" / "seed0" / "checkpoint.pt")["strategy"]
    assert all(torch.equal(phi_a["model"][k], phi_b["model"][k]) for k in phi_a["model"])


@pytest.mark.parametrize("change, message", [
    (dict(strategies=["nope"]), "unknown strategy 'nope'"),
    (dict(noise=1.2), "noise ratio must be in"),
    (dict(split="4-6"), "split must look like IN:OOD"),
    (dict(split="0:6"), "both parts must be positive"),
    (dict(budget=0), "budget must be an integer >= 1"),
    (dict(budget=400), "more than the pool holds"),
    (dict(options={"informativeness": "bald"}), "strategy 'mqnet': informativeness must be one of"),
    (dict(strategies=["random"], options={"purity": "knn"}), "option 'purity' belongs to none of the strategies"),
    (dict(seeds=[1, 1]), "seeds must be distinct"),
])
def test_bad_configuration_fails_at_start(tmp_path, digits, change, message):
    with pytest.raises(ConfigError, match=message):
        Experiment(tiny(**change), tmp_path / "run", data=digits)


def test_run_dir_of_another_experiment_is_refused(tmp_path, digits):
    Experiment(tiny(strategies=["random"], rounds=0), tmp_path / "run", data=digits).run()
    with pytest.raises(ConfigError, match="holds a different experiment \\(noise: 0.6 there, 0.4 now\\)"):
        Experiment(tiny(strategies=["random"], rounds=0, noise=0.4), tmp_path / "run", data=digits)


def test_check_selection_catches_broken_strategies():
    candidates = np.array([2, 5, 7, 9])
    np.testing.assert_array_equal(check_selection(np.array([9, 2]), candidates, 2, "s"), [3, 0])
    with pytest.raises(RuntimeError, match="repeated"):
        check_selection(np.array([5, 5]), candidates, 2, "s")
    with pytest.raises(RuntimeError, match="labeled or not in the pool"):
        check_selection(np.array([5, 6]), candidates, 2, "s")
    with pytest.raises(RuntimeError, match="expected \\(3,\\)"):
        check_selection(np.array([5, 7]), candidates, 3, "s")


def test_cli_run_and_report(tmp_path, capsys):
    run_dir = tmp_path / "cli"
    args = ["run", "--strategies", "mqnet,random", "--rounds", "1", "--budget", "10", "--iterations", "2",
            "--encoder-epochs", "1",
            "--meta-epochs", "1", "--meta-min-steps", "3", "--quiet", "--run-dir", str(run_dir), "--report"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| mqnet |" in out and "| random |" in out and "report.png" in out
    assert (run_dir / "report.png").stat().st_size > 1000
    import pandas as pd

    table = pd.read_csv(run_dir / "report.csv")
    assert set(table.strategy) == {"mqnet", "random"} and (table.last_round == 1).all()
    assert main(args) == 0  # everything done: resumes to nothing and reports again
    assert main(["report", str(run_dir), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.md").exists()
    assert main(["run", "--strategies", "bogus", "--run-dir", str(tmp_path / "x")]) == 2
    assert "unknown strategy 'bogus'" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "empty-nothing")]) == 2


def test_end_to_end_on_an_rgb_imagefolder(tmp_path):
    """3-channel images, horizontal flips, a tar archive read in place and cached."""
    import tarfile

    from PIL import Image

    rng = np.random.RandomState(0)
    for split, count in (("train", 15), ("test", 4)):
        for cls in ("a", "b", "c", "d"):
            folder = tmp_path / "tree" / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.randint(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    with tarfile.open(tmp_path / "tree.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "tree", arcname="tree")
    config = ExperimentConfig(dataset=f"imagefolder:{tmp_path / 'tree.tar.gz'}", split="2:2", noise=0.2,
                              strategies=["mqnet", "coreset"], rounds=1, budget=4, iterations=2, encoder_epochs=1,
                              options={"meta_epochs": 1, "meta_min_steps": 2}, cache_dir=str(tmp_path / "cache"),
                              progress=False)
    experiment = Experiment(config, tmp_path / "run")
    assert experiment.data.image_shape == (8, 8, 3) and experiment.data.flip
    records = experiment.run()
    assert [r["round"] for r in records] == [0, 1, 0, 1]
    assert all(r["labeled_in"] + r["labeled_ood"] == 4 * (r["round"] + 1) for r in records)


def test_run_directory_holds_config_and_scores(tmp_path, digits):
    # top-b selection: a per-class query has no Selection.scores (only the column meta_score)
    Experiment(tiny(strategies=["mqnet", "random"], rounds=1, options={"selection": "top"}), tmp_path / "run",
               data=digits).run()
    run = tmp_path / "run" / "mqnet" / "seed0"
    config = json.loads((run / "config.json").read_text())
    assert config["strategy"] == "mqnet" and config["budget"] == 12 and len(config["in_classes"]) == 4
    with np.load(run / "scores" / "round_000.npz") as f:
        assert set(f.files) >= {"candidates", "query", "is_in", "score", "purity", "informativeness",
                                "purity_std", "informativeness_std", "meta_score"}
        from mqnet_fast.metrics import auroc

        record = json.loads((run / "metrics.json").read_text())[0]
        assert record["purity_auroc"] == auroc(f["purity"], f["is_in"])
        assert record["informativeness_auroc"] == auroc(f["informativeness"], f["is_in"])
        assert f["score"].shape == f["candidates"].shape and np.isin(f["query"], f["candidates"]).all()
        # round 0 ranks by P + I: the query is the top of that score
        top = f["candidates"][np.argsort(-f["score"], kind="stable")[:12]]
        assert set(top) == set(f["query"])
    with np.load(tmp_path / "run" / "random" / "seed0" / "scores" / "round_000.npz") as f:
        assert "score" not in f.files  # random has no per-example score
    assert "purity_auroc" not in json.loads((tmp_path / "run" / "random" / "seed0" / "metrics.json").read_text())[0]


def test_purity_is_pluggable():
    from mqnet_fast.strategies import MQNetStrategy, RoundView

    g = torch.Generator().manual_seed(0)
    view = RoundView(torch.arange(50), torch.softmax(torch.randn(50, 3, generator=g), 1), torch.rand(50, 8, generator=g),
                     g, labeled_feats=torch.rand(6, 8, generator=g), labeled_is_in=torch.tensor([1, 0, 1, 0, 1, 0]).bool())
    other = torch.rand(50, generator=g)
    options = MQNetStrategy.Options(purity="knn", informativeness="conf")
    default = MQNetStrategy(options).meta_inputs(view)
    plugged = MQNetStrategy(options, purity_fn=lambda v: other).meta_inputs(view)
    assert torch.equal(default[:, 1], plugged[:, 1]) and not torch.equal(default[:, 0], plugged[:, 0])
    assert torch.allclose(plugged[:, 0], (other - other.mean()) / other.std())


def test_resume_with_other_strategy_options_is_refused(tmp_path, digits):
    Experiment(tiny(strategies=["mqnet"], rounds=1), tmp_path / "run", data=digits).run(stop_after_rounds=1)
    changed = tiny(strategies=["mqnet"], rounds=1, options={"meta_epochs": 3, "meta_min_steps": 5})
    with pytest.raises(ConfigError, match="was made with strategy options"):
        Experiment(changed, tmp_path / "run", data=digits).run()


def test_purity_diagnostics_and_the_encoder_epochs_reach_the_run(tmp_path, digits, monkeypatch):
    from mqnet_fast.metrics import auroc
    from mqnet_fast.scores import PURITY
    from mqnet_fast.training import contrastive

    seen = []
    original = contrastive.train_encoder
    monkeypatch.setattr(contrastive, "train_encoder", lambda *a, **k: seen.append(a[2]) or original(*a, **k))
    config = tiny(strategies=["mqnet"], rounds=1, encoder_epochs=2, purity_diagnostics=True)
    record = Experiment(config, tmp_path / "run", data=digits).run()[0]
    assert [c.epochs for c in seen] == [2]  # trained once, with the run's epochs
    with np.load(tmp_path / "run" / "mqnet" / "seed0" / "scores" / "round_000.npz") as f:
        assert record["auroc_csi"] == auroc(f["purity"], f["is_in"])  # MQ-Net's own purity is csi
    assert {f"auroc_{name}" for name in PURITY} <= set(record)
    with pytest.raises(ConfigError, match="encoder_epochs: 2 there, 3 now"):
        Experiment(tiny(strategies=["mqnet"], rounds=1, encoder_epochs=3), tmp_path / "run", data=digits)


def test_loss_module_all_trains_every_strategy_on_one_model(tmp_path, digits):
    """loss_module "all": every strategy's target carries learning loss's module, so round 0 (the
    same labeled set) is one model for RANDOM, CONF and MQ-Net; "auto" gives MQ-Net (informativeness
    ll) another model than RANDOM's. The records and the report say which recipe each trained."""
    from mqnet_fast.report import write_report

    strategies = ["random", "conf", "mqnet"]
    for mode in ("auto", "all"):
        records = Experiment(tiny(strategies=strategies, rounds=1, purity_diagnostics=False, loss_module=mode,
                                  options={"purity": "knn"}), tmp_path / mode, data=digits).run()
        first = {r["strategy"]: r for r in records if r["round"] == 0}
        recipes = {r["target_recipe"] for r in first.values()}
        models = {(r["test_accuracy"], r["train_loss"]) for r in first.values()}
        if mode == "all":
            assert recipes == {"resnet-loss-module"} and len(models) == 1
        else:
            assert recipes == {"resnet", "resnet-loss-module"} and len(models) == 2
        table = write_report([tmp_path / mode])["table"]
        assert ("Not equal models" in table) == (mode == "auto")


def test_records_hold_the_class_balance_of_each_query(tmp_path, digits):
    from mqnet_fast.experiment.runner import class_balance

    assert class_balance(np.array([0, 1, 2, 3]), 4)["query_class_balance"] == pytest.approx(1.0)
    assert class_balance(np.array([2, 2, 2]), 4) == {"query_in_classes": [0, 0, 3, 0], "query_class_balance": 0.0}
    half = class_balance(np.array([0, 0, 1, 1]), 4)["query_class_balance"]
    assert half == pytest.approx(np.log(2) / np.log(4))
    assert np.isnan(class_balance(np.array([], dtype=np.int64), 4)["query_class_balance"])
    records = Experiment(tiny(strategies=["random"], rounds=1), tmp_path / "run", data=digits).run()
    query = records[0]
    assert sum(query["query_in_classes"]) == query["query_in"] and len(query["query_in_classes"]) == 4


@pytest.mark.parametrize("batching", ["fill", "distinct"])
def test_batching_distinct_never_repeats_an_example_in_a_batch(batching, monkeypatch):
    """A labeled set of 10 with batch 64: "fill" repeats examples to 64 rows a batch, "distinct" gives
    batches of the 10, each once (rounded down to a multiple of micro_batches: 2 -> 10, 3 -> 9)."""
    from mqnet_fast.training import DeviceFeatures, TrainConfig, make_model
    from mqnet_fast.training import target

    seen = []

    def spy(real):
        def batches(n, batch_size, generator):
            for batch in real(n, batch_size, generator):
                seen.append(batch.clone())
                yield batch
        return batches

    monkeypatch.setattr(target, "shuffled_batches", spy(target.shuffled_batches))
    monkeypatch.setattr(target, "distinct_batches", spy(target.distinct_batches))
    feats = torch.randn(30, 5)
    images = DeviceFeatures(feats, feats.mean(0), feats.std(0), torch.device("cpu"))
    for parts, size in ((2, 10), (3, 9)):
        seen.clear()
        model = make_model(3, 5, torch.device("cpu"), 0, arch="head", width=0)
        config = TrainConfig(iterations=4, batch_size=64 if parts == 2 else 63, lr=0.1,
                             micro_batches=parts, batching=batching)
        target.train_model(model, images, torch.arange(10), torch.arange(10) % 3, config, seed=0, show_progress=False)
        assert len(seen) >= 4
        for batch in seen[:4]:
            if batching == "fill":
                assert len(batch) == config.batch_size and len(torch.unique(batch)) == 10
            else:
                assert len(batch) == size and len(torch.unique(batch)) == size


@pytest.mark.parametrize("field, first, second", [("batching", "fill", "distinct"), ("loss_module", "all", "auto")])
def test_batching_and_loss_module_are_part_of_the_experiment(tmp_path, digits, field, first, second):
    """A run directory made with one value refuses a rerun with the other, naming the field; with the
    field deleted from experiment.json (edited by hand) it refuses both."""
    run_dir = tmp_path / "run"
    Experiment(tiny(strategies=["random"], rounds=0, **{field: first}), run_dir, data=digits).run()
    with pytest.raises(ConfigError, match=field):
        Experiment(tiny(strategies=["random"], rounds=0, **{field: second}), run_dir, data=digits)
    recorded = json.loads((run_dir / "experiment.json").read_text())
    assert recorded[field] == first
    del recorded[field]
    (run_dir / "experiment.json").write_text(json.dumps(recorded))
    for value in (first, second):
        with pytest.raises(ConfigError, match="experiment.json' was edited or damaged"):
            Experiment(tiny(strategies=["random"], rounds=0, **{field: value}), run_dir, data=digits)


def test_jobs_give_what_one_process_gives_at_the_same_threads(tmp_path, digits):
    """--jobs 2 runs the (strategy, seed) runs in two spawned processes of threads // 2 threads each,
    round 0 trained first at that count: the same records and queries as one process at that count
    (a run's numbers depend on its thread count, not on which process ran it)."""
    config = tiny(strategies=["mqnet", "random", "coreset"], seeds=[0, 1], rounds=2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        jobs = Experiment(dataclasses.replace(config, jobs=2), tmp_path / "jobs", data=digits).run()
        torch.set_num_threads(1)
        serial = Experiment(config, tmp_path / "serial", data=digits).run()
    finally:
        torch.set_num_threads(before)
    assert _strip(jobs) == _strip(serial)
    assert [(r["strategy"], r["seed"]) for r in jobs] == [(r["strategy"], r["seed"]) for r in serial]
    # round 0 was trained once per seed, by the parent, before any worker started a run
    first_config = min(p.stat().st_mtime for p in (tmp_path / "jobs").glob("*/seed*/config.json"))
    assert all(p.stat().st_mtime <= first_config for p in (tmp_path / "jobs" / "round0").glob("seed*/*.pt"))
    assert len(list((tmp_path / "jobs" / "round0").glob("seed*/*.pt"))) == 2
    for name in config.strategies:
        for seed in (0, 1):
            a = json.loads((tmp_path / "jobs" / name / f"seed{seed}" / "queries.json").read_text())
            assert a == json.loads((tmp_path / "serial" / name / f"seed{seed}" / "queries.json").read_text())
            assert json.loads((tmp_path / "jobs" / name / f"seed{seed}" / "config.json").read_text())["torch_threads"] == 1
    import pandas as pd

    assert len(pd.read_csv(tmp_path / "jobs" / "results.csv")) == 3 * 2 * 3  # every run's rounds, once all ended


def test_a_failed_job_is_named_and_the_others_keep_their_rounds(tmp_path, digits):
    config = tiny(strategies=["random", "conf"], rounds=1, jobs=2)
    # a checkpoint sealed for run conf seed 0 whose state is not a run state: the parent's checks read
    # seals only, the worker fails when it loads the state, and its named error is raised by name
    experiment = Experiment(config, tmp_path / "run", data=digits)
    run = experiment.store.run("conf", 0)
    save_sealed(run.checkpoint_path, {"labeled": "not a list"},
                {**run.identity(experiment.identity, experiment._options("conf")), "round": 0})
    with pytest.raises(RunFileError, match="run conf seed 0: checkpoint .* is not a run state"):
        experiment.run()
    bad = run.path
    # the other run was stopped at once; what it saved is whole rounds, and a rerun completes it
    (bad / "checkpoint.pt").unlink()
    Experiment(config, tmp_path / "run", data=digits).run()
    assert len(json.loads((tmp_path / "run" / "random" / "seed0" / "metrics.json").read_text())) == 2


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True])
def test_bad_jobs_are_refused_by_name(tmp_path, digits, jobs):
    with pytest.raises(ConfigError, match="jobs must be an integer >= 1"):
        Experiment(tiny(jobs=jobs), tmp_path / "run", data=digits)
