"""A new method is one module, one config and one `register_method` call; the trainer then serves it."""

from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
import torch

from hf_unlearn import UnlearnConfig, UnlearningTrainer, available_methods, get_method, register_method
from hf_unlearn.contract import UnlearningMethod


@dataclass
class ZeroHeadConfig:
    scale: float = field(default=0.0, metadata={"help": "factor applied to the head rows of the forget classes"})


class ZeroHead(UnlearningMethod):
    """A toy gradient-free method: scale the head rows of the forget classes."""

    def run(self):
        head = self.trainer.model.classifier
        head = head[-1] if isinstance(head, torch.nn.Sequential) else head
        with torch.no_grad():
            for class_id in self.trainer.split.forget_classes:
                head.weight[class_id] *= self.config.scale
                head.bias[class_id] = -1e4


@contextmanager
def isolated_registry():
    """Registrations made inside go into a copy of the registry, dropped on exit, so no toy method leaks."""
    from hf_unlearn import registry

    available_methods()  # the built-in methods are in the copy
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry, "_METHODS", dict(registry._METHODS))
        yield


@pytest.fixture
def registry_copy():
    """The test's registrations are removed after it (`isolated_registry`)."""
    with isolated_registry():
        yield


def test_registered_method_runs_through_the_trainer(trained, digits, tmp_path, registry_copy):
    register_method("zero_head", ZeroHeadConfig, ZeroHead, description="toy")
    assert "zero_head" in available_methods()
    assert get_method("zero_head").config_class is ZeroHeadConfig
    args = UnlearnConfig(output_dir=str(tmp_path), method="zero_head", method_kwargs={"scale": 0.0})
    result = UnlearningTrainer(
        trained("vit"), args, train_dataset=digits["train"], eval_dataset=digits["test"], forget_classes=[3]
    ).unlearn()
    assert result.metrics["forget_accuracy"] == 0.0
    # Only the forget rows of the head changed: retained rows that were mistaken for a 3 can only improve.
    assert result.metrics["retain_accuracy"] >= result.original_metrics["retain_accuracy"]
    assert result.metrics["per_class_accuracy"]["one"] == result.original_metrics["per_class_accuracy"]["one"]


def test_a_test_registration_does_not_leak():
    builtin = available_methods()
    with isolated_registry():
        register_method("leak_probe", ZeroHeadConfig, ZeroHead, description="toy")
        assert "leak_probe" in available_methods() and get_method("leak_probe").method_class is ZeroHead
    assert available_methods() == builtin  # the probe is gone, every built-in method still there
    with pytest.raises(ValueError, match="Unknown unlearning method 'leak_probe'"):
        get_method("leak_probe")


def test_registry_rejects_a_non_dataclass_config_and_name_clashes():
    with pytest.raises(TypeError, match="must be a dataclass"):
        register_method("broken", dict, ZeroHead, description="x")
    with pytest.raises(ValueError, match="already registered"):
        register_method("finetune", ZeroHeadConfig, ZeroHead, description="x")


def test_the_public_api_is_importable_from_the_package():
    import hf_unlearn

    assert sorted(hf_unlearn.__all__) == sorted(hf_unlearn._EXPORTS)
    for name in hf_unlearn.__all__:
        assert getattr(hf_unlearn, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        hf_unlearn.Nope  # noqa: B018


def test_a_misspelt_method_gets_a_suggestion(tmp_path):
    from hf_unlearn import UnlearnConfig

    with pytest.raises(ValueError, match=r"Unknown unlearning method 'svd_projektion'\. Did you mean 'svd_projection'\?"):
        UnlearnConfig(output_dir=str(tmp_path), method="svd_projektion")
