import copy
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from hf_unlearn.digits import (
    DEFAULT_TRAINING,
    digits_classifier,
    load_digits_dataset,
    train_classifier,
    training_arguments,
)

torch.set_num_threads(min(2, torch.get_num_threads()))

# Tests train with quiet Trainer output.
QUIET = {"disable_tqdm": True}


@pytest.fixture(scope="session")
def digits():
    return load_digits_dataset()


@pytest.fixture(scope="session")
def _trained_models(digits, tmp_path_factory):
    models = {}
    for architecture in ("vit", "resnet"):
        recipe = DEFAULT_TRAINING[architecture]
        output = tmp_path_factory.mktemp(f"original_{architecture}")
        models[architecture] = train_classifier(
            digits_classifier(architecture), digits["train"], str(output), **recipe, **QUIET
        )
    return models


@pytest.fixture
def trained(_trained_models):
    """`trained("vit")`: a fresh copy of the session's trained digits classifier (tests may modify it)."""
    return lambda architecture: copy.deepcopy(_trained_models[architecture])


@pytest.fixture
def make_args(tmp_path):
    """UnlearnConfig factory with the digits recipe, quiet and writing under the test's tmp dir."""
    from hf_unlearn import UnlearnConfig

    def make(method="finetune", epochs=1, learning_rate=1e-3, **overrides):
        values = training_arguments(str(tmp_path / method), epochs=epochs, learning_rate=learning_rate, **QUIET)
        values.update(overrides)
        return UnlearnConfig(method=method, **values)

    return make
