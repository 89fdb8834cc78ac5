"""Class-incremental metrics (splitlora/metrics.py): the accuracy matrix, final and average
incremental accuracy, forgetting (undefined after a single task, as for joint training, whose
run gives every class as one task)."""
from __future__ import annotations

import pytest

from splitlora.metrics import AccuracyTracker, forgetting, format_matrix
from splitlora.run.experiment import Experiment
from splitlora.run.rundir import RunDir
from tests.helpers import make_config


def test_forgetting_is_undefined_after_one_task_and_the_mean_drop_after_several():
    one = AccuracyTracker(1)
    one.update(0, 0, 9, 10)
    assert one.summary()["forgetting"] is None  # one task: nothing to forget (not 0)
    two = AccuracyTracker(2)
    for t, j, c in ((0, 0, 10), (1, 0, 7), (1, 1, 9)):
        two.update(t, j, c, 10)
    s = two.summary()
    assert s["forgetting"] == pytest.approx(30.0)
    assert s["acc_per_task"] == pytest.approx([100.0, 80.0]) and s["final_acc"] == pytest.approx(80.0)
    assert s["avg_inc_acc"] == pytest.approx(90.0)
    assert s["acc_matrix"] == [[100.0, None], [70.0, 90.0]]


def test_the_max_over_every_earlier_row_counts_and_rows_are_sample_weighted():
    m = [[50.0, None, None], [80.0, 60.0, None], [40.0, 30.0, 90.0]]
    assert forgetting(m, 2) == pytest.approx(((80 - 40) + (60 - 30)) / 2)
    t = AccuracyTracker(2)
    t.update(0, 0, 1, 2)
    t.update(1, 0, 1, 2)
    t.update(1, 1, 8, 8)
    assert t.acc_after_task()[1] == pytest.approx(100.0 * 9 / 10)  # not the mean of 50 and 100
    with pytest.raises(ValueError, match="cannot be evaluated"):
        t.update(0, 1, 1, 1)


def test_a_partly_evaluated_run_reports_the_tasks_done():
    t = AccuracyTracker(3)
    t.update(0, 0, 5, 10)
    assert t.tasks_done() == 1 and t.summary()["final_acc"] == pytest.approx(50.0)
    copy = AccuracyTracker(3)
    copy.load_state_dict(t.state_dict())
    assert copy.summary() == t.summary()
    assert "after \\ task" in format_matrix(t.acc_matrix())


def test_joint_method_gets_every_class_as_one_task(tmp_path):
    data = {"device": "cpu", "dataset": {"name": "synthetic", "num_tasks": 5, "synthetic": {
        "num_classes": 10, "train_per_class": 2, "val_per_class": 1, "image_size": 8}},
        "model": {"name": "vit_tiny_patch16_224", "pretrained": False, "img_size": 16,
                  "kwargs": {"patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}}}
    split = Experiment(make_config(data), RunDir(tmp_path / "a"), progress=False)
    joint = Experiment(make_config({**data, "method": {"name": "joint"}}), RunDir(tmp_path / "b"),
                       progress=False)
    assert len(split.tasks) == 5 and len(joint.tasks) == 1
    assert sorted(joint.tasks[0]) == sorted(c for t in split.tasks for c in t)
    assert list(tmp_path.iterdir()) == []  # checking the data writes nothing
