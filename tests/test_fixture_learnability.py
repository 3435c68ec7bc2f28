"""The generated mini-VOC is learnable: a small net trained briefly on the CPU beats chance by far."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "fixture_learnability.py"


@pytest.mark.slow
def test_mini_voc_is_learnable():
    spec = importlib.util.spec_from_file_location("fixture_learnability", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.run(minutes=5.0, backbone="resnet18", n_train=120, n_val=30, seed=0, max_steps=120)
    assert result["steps"] == 120
    assert result["miou"] > 5 * result["chance_background_only"], result
