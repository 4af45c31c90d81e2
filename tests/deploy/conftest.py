"""One short digits training run shared by the deploy tests (trained once per session)."""

from __future__ import annotations

import dataclasses

import pytest

from one_fast.cli.train_flags import config_from_args
from one_fast.train import run


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A finished digits run (ResNet-8, m = 3, 1 epoch): its folder."""
    out = tmp_path_factory.mktemp("deploy_run") / "digits"
    config = dataclasses.replace(config_from_args([]), depth=8, epochs=1, batch_size=64,
                                 lr_milestones=(), progress=False, out_dir=str(out))
    run(config)
    return out
