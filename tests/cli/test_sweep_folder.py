"""``mmgpt-compare resume=DIR`` / ``report=DIR`` treat the comparison directory as data (mmgpt/sweep_folder.py).

Two real comparison directories per module: a tiny real sweep (one job trained for a few steps) and a tuned,
size-matched comparison whose training is stood in (its ``tune/launch.yaml``, Optuna journal and ``matching.json``
are written by the real machinery). Each test copies one, plants ONE crafted value into one of its files and runs
the command: it exits with one line naming the file and the key, no marker file appears, nothing is written
outside the copied folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

import mmgpt.cli.compare as compare
from tests.helpers.planted import (
    ENV,
    RESOLVER,
    SECRET,
    SOURCE,
    files_under,
    interpolations,
    refused_in_one_line,
    target_node,
)

SWEEP = ["experiment=smoke", "model/fusion=early", "seed=0", "logger=csv", "model.dim=16", "data.num_train=32",
         "data.num_val=16", "data.num_test=16", "data.batch_size=16", "trainer.max_epochs=1",
         "trainer.limit_train_batches=2", "callbacks.progress=null", "compare.robustness=false",
         "compare.cost=false"]
JOB = "0_early_seed0"
LR = "model.module.optimizer.lr"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny comparison directory: multirun.yaml, one run with config.yaml, .hydra/, results.json."""
    sweep_dir = tmp_path_factory.mktemp("real") / "sweep"
    compare.main([*SWEEP, f"hydra.sweep.dir={sweep_dir}"])
    assert (sweep_dir / JOB / "results.json").is_file()
    return sweep_dir


def _stand_in_train(cfg: Any) -> dict[str, Any]:
    """Training stood in: the files a run writes, a validation accuracy rising with the learning rate."""
    from mmgpt.cli.common import write_json
    from mmgpt.cli.train import fusion_name

    out = Path(cfg.paths.output_dir)
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    acc = min(1.0, 0.5 + 50 * float(cfg.model.module.optimizer.lr))
    results = {"fusion": fusion_name(cfg), "seed": int(cfg.seed), "val": {"val/acc": acc},
               "test": {"test/acc": acc}, "params": {"total": 100, "fusion": 10}, "wall_time_s": 1.0,
               "epochs": 1, "global_step": 1, "best_ckpt": None}
    write_json(out / "results.json", results)
    return results


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tuned, size-matched comparison directory: tune/launch.yaml, tune/optuna.journal, matching.json."""
    sweep_dir = tmp_path_factory.mktemp("tuned") / "sweep"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compare, "train", _stand_in_train)
        compare.main(["tune=1", "compare.match=params", "data.image_size=16",
                      "model/fusion=early,late", "seed=0", "compare.robustness=false", "compare.cost=false",
                      f"hydra.sweep.dir={sweep_dir}"])
    for name in ("tune/launch.yaml", "tune/optuna.journal", "matching.json", "tuning.json"):
        assert (sweep_dir / name).is_file(), name
    return sweep_dir


@pytest.fixture
def copied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Copy a comparison directory into this test's folder; the environment the oc.env payload would read."""
    monkeypatch.setenv(ENV, SECRET)

    def copy(source: Path) -> Path:
        return Path(shutil.copytree(source, tmp_path / "sweep"))
    return copy


def _refused(tmp_path: Path, folder: Path, args: list[str], file: Path, key: str) -> str:
    """Run ``mmgpt-compare args``: one line naming ``file`` and ``key``, no marker, nothing written outside."""
    before = files_under(tmp_path, skip=folder)
    message = refused_in_one_line(compare.main, args)
    assert f"{file}: {key}" in message, message
    assert not (tmp_path / "marker").exists() and SECRET not in message
    assert files_under(tmp_path, skip=folder) == before
    return message


def _edit_yaml(path: Path, edit) -> None:
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    edit(node)
    OmegaConf.save(OmegaConf.create(node), path)


def _evil_search_path(tmp_path: Path) -> Path:
    """A config folder outside mmgpt with an experiment that would add a callback writing the marker."""
    conf = tmp_path / "evil_conf"
    (conf / "experiment").mkdir(parents=True)
    (conf / "experiment" / "planted.yaml").write_text(
        "# @package _global_\ncallbacks:\n  planted:\n    _target_: shutil.copyfile\n"
        f"    _args_: ['{SOURCE}', '{tmp_path / 'marker'}']\n")
    return conf


#: (section of multirun.yaml's hydra.overrides, the override planted; {tmp} is the test's folder)
MULTIRUN = {
    "search_path": ("hydra", "hydra.searchpath=[file://{tmp}/evil_conf]"),
    "experiment_from_added_path": ("task", "experiment=planted"),
    "plugins": ("task", "plugins=[mmgpt_planted_plugin]"),
    "callback_target": ("task", "+callbacks.planted={{_target_: shutil.copyfile, _args_: ['{src}', '{tmp}/marker']}}"),
    "hydra_callback": ("hydra", "+hydra.callbacks.planted._target_=shutil.copyfile"),
    "env_set": ("hydra", "hydra.job.env_set.PATH={tmp}/bin"),
    "logging_handler": ("hydra", "hydra.job_logging.handlers.file.filename={tmp}/outside.log"),
    "logging_group": ("hydra", "hydra/job_logging=disabled"),
    "launcher_setup": ("hydra", "hydra.launcher.setup=['touch {tmp}/marker']"),
    "checkpoint_dirpath": ("task", "callbacks.model_checkpoint.dirpath={tmp}/outside"),
    "logger_save_dir": ("task", "logger.csv.save_dir={tmp}/outside"),
    "logger_name": ("task", "logger.csv.name=../../outside"),
    "sweep_subdir": ("hydra", "hydra.sweep.subdir=../../escaped"),
    "oc_env": ("task", "+planted=${{oc.env:" + ENV + "}}"),
    "custom_resolver": ("task", "+planted=${{" + RESOLVER + ":{tmp}/marker}}"),
    "trust_remote_code": ("task", "+model.net.encoders.text.trust_remote_code=true"),
    "flag": ("task", "--config-dir={tmp}/evil_conf"),
}


@pytest.mark.parametrize("case", sorted(MULTIRUN))
def test_resume_refuses_a_stored_override_that_is_not_data(sweep, copied, tmp_path, monkeypatch, case):
    folder = copied(sweep)
    _evil_search_path(tmp_path)
    plugin = tmp_path / "plugins"
    plugin.mkdir()
    (plugin / "mmgpt_planted_plugin.py").write_text(f"open({str(tmp_path / 'marker')!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(plugin))
    section, override = MULTIRUN[case]
    override = override.format(tmp=tmp_path, src=SOURCE)
    multirun = folder / "multirun.yaml"
    index: list[int] = []

    def add(node: dict) -> None:
        overrides = node["hydra"]["overrides"][section]
        index.append(len(overrides))
        overrides.append(override)

    _edit_yaml(multirun, add)
    # the user's own search path on the command line does not make a stored experiment from it trusted
    user = [f"hydra.searchpath=[file://{tmp_path}/evil_conf]"] if case == "experiment_from_added_path" else []
    message = _refused(tmp_path, folder, [f"resume={folder}", *user], multirun,
                       f"hydra.overrides.{section}[{index[0]}]: ")
    assert "refused" in message and "command line" in message


def test_resume_of_an_untouched_real_sweep_trains_nothing(sweep, copied, monkeypatch):
    folder = copied(sweep)
    monkeypatch.setattr(compare, "train", lambda cfg: pytest.fail("a finished run was trained again"))
    compare.main([f"resume={folder}"])
    assert (folder / "report.md").is_file()


@pytest.mark.parametrize("payload", ["oc_create", "oc_env", "custom_resolver", "target"])
def test_resume_refuses_a_run_config_yaml_value_that_is_not_data(sweep, copied, tmp_path, payload):
    """A run's config.yaml: an interpolation anywhere, a _target_ in its data config (the cost step builds the
    data from it, here turned on by the user's command line)."""
    folder = copied(sweep)
    config = folder / JOB / "config.yaml"
    marker = tmp_path / "marker"
    value = target_node(marker) if payload == "target" else interpolations(marker)[payload]
    _edit_yaml(config, lambda c: c["data"].__setitem__("modality_dropout", value))
    key = "data.modality_dropout" + ("._target_" if payload == "target" else "")
    _refused(tmp_path, folder, [f"resume={folder}", "compare.cost=true"], config, f"{key}: ")


@pytest.mark.parametrize("payload", ["custom_resolver", "oc_create"])
def test_report_refuses_an_interpolated_ranking_in_multirun_yaml(sweep, copied, tmp_path, payload):
    folder = copied(sweep)
    multirun = folder / "multirun.yaml"
    _edit_yaml(multirun, lambda c: c["compare"].__setitem__("metric", interpolations(tmp_path / "marker")[payload]))
    _refused(tmp_path, folder, [f"report={folder}"], multirun, "compare.metric: ")


def test_report_shows_a_stored_run_override_as_text_never_resolved(sweep, copied, tmp_path):
    folder = copied(sweep)
    planted = interpolations(tmp_path / "marker")["custom_resolver"]
    path = folder / JOB / ".hydra" / "overrides.yaml"
    path.write_text(path.read_text() + f"- +planted={planted}\n")
    (folder / "report.md").unlink()
    compare.main([f"report={folder}"])
    assert not (tmp_path / "marker").exists() and (folder / "report.md").is_file()


@pytest.mark.parametrize(("edit", "key"), [
    (lambda r: r.pop("fusion"), "fusion"),
    (lambda r: r.__setitem__("seed", "0"), "seed"),
    (lambda r: r.__setitem__("val", "high"), "val"),
    (lambda r: r.__setitem__("test", {"test/acc": "0.9"}), "test"),
])
def test_report_names_a_malformed_results_json_in_one_line(sweep, copied, tmp_path, edit, key):
    folder = copied(sweep)
    path = folder / JOB / "results.json"
    results = json.loads(path.read_text())
    edit(results)
    path.write_text(json.dumps(results))
    _refused(tmp_path, folder, [f"report={folder}"], path, f"{key}: ")


def test_report_names_an_unparsable_results_json_in_one_line(sweep, copied, tmp_path):
    folder = copied(sweep)
    path = folder / JOB / "results.json"
    path.write_text(path.read_text()[:-10])
    _refused(tmp_path, folder, [f"report={folder}"], path, "not a readable JSON file")


# ---------------------------------------------------------------------------------------------------------------
# A tuned, size-matched comparison: its launch record, its Optuna journal, its matching.json.


@pytest.mark.parametrize("override", [
    "--config-dir={tmp}/evil_conf",
    "+callbacks.planted={{_target_: shutil.copyfile, _args_: ['{src}', '{tmp}/marker']}}",
    "hydra.searchpath=[file://{tmp}/evil_conf]",
])
def test_tuned_resume_refuses_a_stored_launch_argument(tuned, copied, tmp_path, override):
    folder = copied(tuned)
    _evil_search_path(tmp_path)
    launch = folder / "tune" / "launch.yaml"
    index: list[int] = []

    def add(node: dict) -> None:
        index.append(len(node["args"]))
        node["args"].append(override.format(tmp=tmp_path, src=SOURCE))

    _edit_yaml(launch, add)
    _refused(tmp_path, folder, [f"resume={folder}"], launch, f"args[{index[0]}]: ")


@pytest.mark.parametrize(("param", "value"), [
    ("+callbacks.planted._target_", "shutil.copyfile"),
    (LR, "{_target_: shutil.copyfile, _args_: [a, b]}"),
    (LR, "${oc.env:" + ENV + "}"),
])
def test_tuned_resume_refuses_a_journal_trial_whose_values_are_not_data(tuned, copied, tmp_path, param, value):
    """A best trial planted into the real Optuna journal (by Optuna itself) would become the final runs'
    overrides."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    folder = copied(tuned)
    journal = folder / "tune" / "optuna.journal"
    study = optuna.load_study(study_name="late", storage=JournalStorage(JournalFileBackend(str(journal))))
    study.add_trial(optuna.trial.create_trial(params={param: value},
                                              distributions={param: CategoricalDistribution([value])}, value=1.0))
    number = len(study.trials) - 1
    _refused(tmp_path, folder, [f"resume={folder}"], journal, f"study late trial {number} params.{param}")


def test_tuned_resume_refuses_a_matching_json_override_that_is_not_a_size(tuned, copied, tmp_path):
    folder = copied(tuned)
    path = folder / "matching.json"
    record = json.loads(path.read_text())
    record["configurations"]["late"]["overrides"]["+callbacks.planted._target_"] = "shutil.copyfile"
    path.write_text(json.dumps(record))
    _refused(tmp_path, folder, [f"resume={folder}"], path,
             "configurations.late.overrides.+callbacks.planted._target_: ")


def test_tuned_report_refuses_an_interpolated_ranking_in_a_run_hydra_config(tuned, copied, tmp_path):
    """A tuned comparison has no multirun.yaml: its ranking comes from the first run's .hydra/config.yaml."""
    folder = copied(tuned)
    path = folder / JOB / ".hydra" / "config.yaml"
    _edit_yaml(path, lambda c: c["compare"].__setitem__("mode", interpolations(tmp_path / "marker")["custom_resolver"]))
    _refused(tmp_path, folder, [f"report={folder}"], path, "compare.mode: ")


@pytest.mark.slow
def test_resume_of_an_untouched_tuned_comparison_trains_nothing(tuned, copied, monkeypatch):
    folder = copied(tuned)
    monkeypatch.setattr(compare, "train", lambda cfg: pytest.fail("a finished run was trained again"))
    compare.main([f"resume={folder}"])
    assert (folder / "report.md").is_file()


# ---------------------------------------------------------------------------------------------------------------
# Property: no string of a real sweep folder, replaced by an interpolation or a {_target_: ...} mapping, ever runs.


def _read_as_resume_and_report(folder: Path) -> int:
    """Every reader ``resume=DIR`` and ``report=DIR`` run before anything is composed or trained (the stored
    overrides, the folder check, ranking, runs, report header, each finished run's config comparison); returns
    how many refused (UserError). Any other exception fails the test: it would be a traceback."""
    from mmgpt.errors import UserError
    from mmgpt.report import read_tuning
    from mmgpt.report.runs import load_runs
    from mmgpt.report.write import sweep_info
    from mmgpt.sweep_folder import check_sweep_folder, read_matching, run_dirs

    refused = 0
    steps = [
        lambda: compare.previous_overrides(folder),
        lambda: check_sweep_folder(folder),
        lambda: compare.report_ranking(folder, None, None),
        lambda: load_runs(folder),
        lambda: sweep_info(folder),
        lambda: (read_tuning(folder), read_matching(folder / "matching.json")),
        lambda: [compare.changed_keys(d, OmegaConf.load(sweep / JOB / "config.yaml")) for d in run_dirs(folder)],
    ]
    sweep = folder.parent / "unplanted"
    for step in steps:
        try:
            step()
        except UserError:
            refused += 1
    return refused


def _string_leaves(path: Path) -> list[tuple[Any, ...]]:
    from tests.helpers.planted import leaves

    node = json.loads(path.read_text()) if path.suffix == ".json" else OmegaConf.to_container(
        OmegaConf.load(path), resolve=False)
    keep = (lambda p: p[:2] == ("hydra", "overrides") or p[:1] == ("compare",)) if path.name == "multirun.yaml" \
        else (lambda p: True)  # multirun.yaml: what is read of it (the rest is Hydra's record, never read)
    return [p for p, v in leaves(node) if isinstance(v, str) and keep(p)]


@pytest.mark.slow
def test_no_string_of_a_real_sweep_folder_ever_runs_when_replaced(sweep, copied, tmp_path):
    from tests.helpers.planted import plant

    folder = copied(sweep)
    shutil.copytree(sweep, tmp_path / "unplanted")
    marker = tmp_path / "marker"
    files = [folder / "multirun.yaml", folder / JOB / "config.yaml", folder / JOB / ".hydra" / "overrides.yaml",
             folder / JOB / "results.json"]
    assert _read_as_resume_and_report(folder) == 0  # the real folder: nothing refused
    tried = 0
    for path in files:
        original = path.read_text()
        for leaf in _string_leaves(path):
            for planted in (interpolations(marker)["custom_resolver"], target_node(marker)):
                node = json.loads(original) if path.suffix == ".json" else OmegaConf.to_container(
                    OmegaConf.create(original), resolve=False)
                plant(node, list(leaf), planted)
                if path.suffix == ".json":
                    path.write_text(json.dumps(node))
                else:
                    OmegaConf.save(OmegaConf.create(node), path)
                refused = _read_as_resume_and_report(folder)
                tried += 1
                where = f"{path.relative_to(folder)}: {'.'.join(map(str, leaf))} = {planted!r}"
                assert not marker.exists(), where
                if path.name == "multirun.yaml" and leaf[:2] == ("hydra", "overrides"):
                    assert refused, f"a stored override was taken: {where}"
        path.write_text(original)
    assert tried > 100
