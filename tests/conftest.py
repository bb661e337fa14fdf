from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import save_tiny_pipeline, save_tiny_sdxl_pipeline  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD-1.x-architecture pipeline saved as a diffusers folder (with generation defaults)."""
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def other_tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same architecture, different weights: edits made for the first must refuse it."""
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_other") / "model", seed=1)


@pytest.fixture
def tiny_pipe(tiny_model_dir: Path):
    from conceptedit.loading import load_pipeline

    pipe = load_pipeline(str(tiny_model_dir), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SDXL-architecture pipeline (two text encoders, text_time conditioning) as a diffusers folder."""
    return save_tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny_sdxl") / "model")


@pytest.fixture
def tiny_sdxl_pipe(tiny_sdxl_dir: Path):
    from conceptedit.loading import load_pipeline

    pipe = load_pipeline(str(tiny_sdxl_dir), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread per test: on a shared 2-core machine, oversubscribed threads make the tiny
    models of the suite 20x slower. Restored after each test."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
