"""Training checkpoints hold tensors and plain data only, and load without running code: a state file
planted in the bucket with a pickled callable is refused, not run (issue 13, "no pickle anywhere")."""

from __future__ import annotations

import logging
import pathlib

import torch

from daemon.handlers.splat import resume
from daemon.handlers.splat.train import Trainer
from daemon.handlers.splat.workspace import Workspace
from tests.splat.test_train import make_scene, small_config


def test_training_state_round_trips_through_a_weights_only_load_and_resumes_exactly(tmp_path):
    # Given a run that trains straight through, and one stopped at step 25 whose state is saved to disk
    cams, points, colors = make_scene()
    straight = Trainer(cams, points, colors, small_config())
    straight.train()
    first = Trainer(cams, points, colors, small_config())
    while first.step < 25:
        first.train_step()
    ws = Workspace(tmp_path)
    path = resume.state_path(ws)
    path.parent.mkdir(parents=True)
    torch.save({"trainer": first.state_dict(), "history": {"step": [1, 2]}, "initial": {"psnr": 9.5}}, path)
    # When another process loads it (tensors and plain data only) and trains on
    torch.manual_seed(999)
    saved = resume.load_training(ws)
    assert saved is not None and saved["initial"] == {"psnr": 9.5}
    resumed = Trainer(cams, points, colors, small_config(seed=123))
    resumed.load_state_dict(saved["trainer"])
    resumed.train()
    # Then it ends bit-identical to the straight run: every RNG came back exactly
    for name in straight.params:
        assert torch.equal(resumed.params[name], straight.params[name]), name


class _Planted:
    """What an attacker with write access to the bucket would put in a state file: unpickling it calls
    a function of their choice (here, one that leaves a mark on disk)."""

    def __init__(self, mark: pathlib.Path) -> None:
        self.mark = mark

    def __reduce__(self):
        return (pathlib.Path.touch, (self.mark,))


def test_a_state_file_with_a_pickled_callable_is_refused_and_not_run(tmp_path, caplog):
    # Given a restored training state whose file carries a pickled callable beside real tensors
    ws = Workspace(tmp_path / "work")
    path = resume.state_path(ws)
    path.parent.mkdir(parents=True)
    mark = tmp_path / "code-ran"
    torch.save({"trainer": {"step": 10, "params": {"means": torch.zeros(3, 3)}}, "x": _Planted(mark)}, path)
    # When the training stage loads it
    with caplog.at_level(logging.ERROR, logger="daemon.handlers.splat.resume"):
        saved = resume.load_training(ws)
    # Then it is refused: nothing of it is used, the callable never ran, the file is gone (training
    # starts again from step 0 over the restored stages), and the log says why
    assert saved is None
    assert not mark.exists()
    assert not path.exists()
    assert "training checkpoint refused" in caplog.text
