import copy
import os
from pathlib import Path

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
# The offline audio benchmark (Hub parquet layout, Audio feature), beside the repository.
SPOKEN_DIGITS = Path(__file__).resolve().parents[2] / "shared" / "data" / "spoken_digits"


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


@pytest.fixture(scope="session")
def _trained_tiny_ast(tmp_path_factory):
    """A 1-layer, 32-wide AST trained 10 epochs on spoken-digits features (about 15 s; learns "three" to ~95 %),
    and its feature extractor."""
    from hf_unlearn import spoken_digits

    features = spoken_digits.load_spoken_digits(SPOKEN_DIGITS)
    names = features["train"].features["label"].names
    model = spoken_digits.ast_classifier(names, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    output = tmp_path_factory.mktemp("original_ast")
    train_classifier(model, features["train"], str(output), epochs=10, learning_rate=3e-3, **QUIET)
    return model, spoken_digits.feature_extractor()


@pytest.fixture
def trained_tiny_ast(_trained_tiny_ast):
    """`(model, feature_extractor)`: a fresh copy of the session's trained tiny spoken-digits AST."""
    model, extractor = _trained_tiny_ast
    return copy.deepcopy(model), extractor
