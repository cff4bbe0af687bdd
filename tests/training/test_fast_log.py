"""mmgpt.training.fast_log: self.log skips Lightning's walk of the logged entry only where it would move nothing."""

import pytest
import torch
from pytorch_lightning.trainer.connectors.logger_connector.result import _Metadata, _ResultMetric

import mmgpt.training.lit_module  # noqa: F401  (installs the check)
from mmgpt.training import fast_log


def _entry(reduce_fx: str = "mean") -> _ResultMetric:
    meta = _Metadata(fx="training_step", name="train/loss", on_step=True, on_epoch=True, reduce_fx=reduce_fx)
    return _ResultMetric(meta, is_tensor=True)


def test_installed_once_by_the_lightning_module():
    assert getattr(_ResultMetric.to, "_mmgpt_fast", False)
    lightning_to = _ResultMetric.to.lightning_to
    assert fast_log.install()
    assert _ResultMetric.to.lightning_to is lightning_to  # not wrapped twice


@pytest.fixture
def walks(monkeypatch):
    """Counts Lightning's walks over a logged entry (``apply_to_collection`` in its ``_ResultMetric.to``)."""
    import pytorch_lightning.trainer.connectors.logger_connector.result as result

    calls = []
    original = result.apply_to_collection
    monkeypatch.setattr(result, "apply_to_collection", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


@pytest.mark.parametrize("reduce_fx", ["mean", "max"])
def test_an_entry_on_the_device_is_returned_without_the_walk(walks, reduce_fx):
    entry = _entry(reduce_fx)
    assert entry.to(torch.device("cpu")) is entry
    assert walks == []
    entry.to("cpu")  # not a torch.device: Lightning's own method
    assert walks == [1]


def test_an_entry_elsewhere_goes_through_lightning(walks):
    entry = _entry()
    elsewhere = torch.device("cpu", 0)  # not equal to the tensors' torch.device("cpu")
    entry.to(elsewhere)
    assert walks == [1]
    entry.cumulated_batch_size = None  # a mean whose batch-size sum is not a tensor on the device
    entry.to(torch.device("cpu"))
    assert walks == [1, 1]


def test_a_logged_metric_object_on_the_device_is_returned_without_the_walk(walks):
    from torchmetrics import MeanMetric

    meta = _Metadata(fx="on_train_epoch_end", name="train/acc", on_step=False, on_epoch=True)
    entry = _ResultMetric(meta, is_tensor=False)
    entry.value = MeanMetric()
    assert entry.to(torch.device("cpu")) is entry
    assert walks == []
    entry.to(torch.device("cpu", 0))
    assert walks == [1]
