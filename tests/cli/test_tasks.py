"""Task configs: each composes with its objective and primary metric (checkpoints and early stopping follow it);
retrieval trains and reports Recall@K both ways and zero-shot accuracy; a primary metric nobody logs is refused."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from omegaconf import DictConfig, open_dict

from mmgpt.cli.train import train
from mmgpt.config import ConfigKeyError

TASKS = {"classify": ("acc", "max"), "regression": ("mae", "min"), "multilabel": ("f1_micro", "max"),
         "binary": ("auroc", "max"), "retrieval": ("r1_image_to_text", "max"), "pretrain": ("loss", "min"),
         "caption": ("token_acc", "max")}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_sets_the_primary_metric_that_checkpoints_follow(compose_cfg: Callable[..., DictConfig],
                                                              task: str) -> None:
    cfg = compose_cfg([f"task={task}", "callbacks=early_stopping"])
    name, mode = TASKS[task]
    assert (cfg.primary_metric.name, cfg.primary_metric.mode) == (name, mode)
    for callback in ("model_checkpoint", "early_stopping"):
        assert cfg.callbacks[callback].monitor == f"val/{name}" and cfg.callbacks[callback].mode == mode
    compare = compose_cfg([f"task={task}", "experiment=compare_fusion"])
    assert (compare.compare.metric, compare.compare.mode) == (name, mode)


SMALL = ["experiment=smoke", "logger=csv", "data.num_train=48", "data.num_val=24", "data.num_test=24",
         "model.dim=16", "callbacks.progress=null"]


@pytest.mark.slow
def test_retrieval_reports_recall_both_ways_and_zero_shot(compose_cfg: Callable[..., DictConfig]) -> None:
    results = train(compose_cfg(["task=retrieval", *SMALL]))
    for split in ("val", "test"):
        for k in (1, 5, 10):
            for key in (f"r{k}_image_to_text", f"r{k}_text_to_image"):
                assert 0.0 <= results[split][f"{split}/{key}"] <= 1.0
        assert f"{split}/zeroshot_acc" in results[split]
        assert results[split][f"{split}/r1_image_to_text"] <= results[split][f"{split}/r10_image_to_text"]


def test_a_primary_metric_the_objectives_do_not_log_is_refused(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg([*SMALL, "primary_metric.name=mae"])
    with pytest.raises(ConfigKeyError, match=r"primary_metric.name='mae': the task's objectives log no such metric "
                                             r"\(they log: acc, f1, loss\)"):
        train(cfg)
    with open_dict(cfg):
        cfg.primary_metric.name, cfg.primary_metric.mode = "acc", "highest"
    with pytest.raises(ConfigKeyError, match=r"primary_metric.mode='highest': expected max"):
        train(cfg)


def test_binary_needs_two_classes(compose_cfg: Callable[..., DictConfig]) -> None:
    with pytest.raises(Exception, match="task=binary needs exactly 2 classes, the data has"):
        train(compose_cfg(["task=binary", *SMALL]))


@pytest.mark.parametrize(("task", "message"), [("binary", "task=binary needs exactly 2 classes, the data has 15"),
                                               ("regression", "regression needs float labels")])
def test_a_task_that_does_not_fit_the_data_is_one_line_from_mmgpt_train(compose_cfg: Callable[..., DictConfig],
                                                                         task: str, message: str) -> None:
    """Not Hydra's instantiation traceback: the command prints one line naming the task and what the data has."""
    from mmgpt.cli.common import user_errors

    with pytest.raises(SystemExit) as stop:
        user_errors(train)(compose_cfg([f"task={task}", *SMALL]))
    assert str(stop.value).startswith("error: ") and message in str(stop.value) and "\n" not in str(stop.value)
