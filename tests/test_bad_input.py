"""Bad input fails with a clear error, before any work (the trainer is never built, the model never copied)."""

import pytest

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.examples.digits import digits_classifier


@pytest.fixture
def model():
    return digits_classifier("resnet")


@pytest.fixture
def args(tmp_path):
    return UnlearnConfig(output_dir=str(tmp_path), method="finetune", max_steps=1)


def build(model, args, digits, **kwargs):
    kwargs.setdefault("train_dataset", digits["train"])
    kwargs.setdefault("eval_dataset", digits["test"])
    return UnlearningTrainer(model, args, **kwargs)


def test_forget_class_id_not_in_label_space(model, args, digits):
    with pytest.raises(ValueError, match=r"`forget_classes` contains 12.*ids 0\.\.9.*'three'"):
        build(model, args, digits, forget_classes=[12])


def test_forget_class_name_not_in_label_space(model, args, digits):
    with pytest.raises(ValueError, match=r"contains 'eleven'.*Valid labels: \['zero', 'one'"):
        build(model, args, digits, forget_classes=["eleven"])


def test_every_class_forgotten(model, args, digits):
    with pytest.raises(ValueError, match="names all 10 classes"):
        build(model, args, digits, forget_classes=list(range(10)))


def test_empty_forget_set(model, args, digits):
    without_threes = digits["train"].filter(lambda row: row["label"] != 3)
    with pytest.raises(ValueError, match=r"forget set is empty.*\[3\]"):
        build(model, args, digits, train_dataset=without_threes, forget_classes=[3])


def test_empty_forget_indices(model, args, digits):
    with pytest.raises(ValueError, match="`forget_indices` is empty"):
        build(model, args, digits, forget_indices=[])


def test_forget_indices_out_of_range(model, args, digits):
    with pytest.raises(ValueError, match=r"`forget_indices` holds \[100000\]"):
        build(model, args, digits, forget_indices=[0, 100000])


def test_dataset_without_label_column(model, args, digits):
    unlabelled = digits["train"].rename_column("label", "target")
    with pytest.raises(ValueError, match=r"`train_dataset` has no label column.*'target'"):
        build(model, args, digits, train_dataset=unlabelled, forget_classes=[3])


def test_model_without_classification_head(args, digits):
    from transformers import ViTModel

    from hf_unlearn.examples.digits import tiny_vit_config

    backbone = ViTModel(tiny_vit_config())
    with pytest.raises(TypeError, match="ViTModel, which has no classification head"):
        build(backbone, args, digits, forget_classes=[3])


def test_a_model_wrapped_in_data_parallel_is_refused_with_the_fix(model, args, digits):
    import torch

    with pytest.raises(TypeError, match=r"wrapped in DataParallel: pass the model it wraps, `model.module`"):
        build(torch.nn.DataParallel(model), args, digits, forget_classes=[3])


def test_a_text_classifier_is_refused_naming_what_is_supported(args, digits):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                        num_labels=10)  # fmt: skip
    with pytest.raises(ValueError, match="BertForSequenceClassification, a text classifier"):
        build(BertForSequenceClassification(config), args, digits, forget_classes=[3])


def test_a_peft_model_is_refused_with_the_merge_that_fixes_it(model, args, digits):
    """A LoRA-fine-tuned classifier (peft's PeftModel) has no classification head of its own type: the error says to
    merge its adapters (not to load another model class)."""
    from peft import LoraConfig, get_peft_model

    adapted = get_peft_model(model, LoraConfig(r=2, target_modules=["convolution"]))
    with pytest.raises(TypeError, match=r"PeftModel.*peft adapters on a ResNetForImageClassification.*merge_and_unload"):
        build(adapted, args, digits, forget_classes=[3])
    # The sequence-classification wrapper (how audio classifiers are often adapted) would pass for a classifier.
    classifier = get_peft_model(digits_classifier("resnet"), LoraConfig(r=2, target_modules=["convolution"],
                                                                        task_type="SEQ_CLS"))  # fmt: skip
    with pytest.raises(TypeError, match=r"PeftModelForSequenceClassification.*merge_and_unload"):
        build(classifier, args, digits, forget_classes=[3])


def test_both_forget_classes_and_indices(model, args, digits):
    with pytest.raises(ValueError, match="exactly one of `forget_classes`.*and `forget_indices`"):
        build(model, args, digits, forget_classes=[3], forget_indices=[0, 1])


def test_neither_forget_classes_nor_indices(model, args, digits):
    with pytest.raises(ValueError, match="exactly one of `forget_classes`"):
        build(model, args, digits)


def test_unknown_method(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown unlearning method 'svdd'\. Available: .*finetune.*neggrad_plus"):
        UnlearnConfig(output_dir=str(tmp_path), method="svdd")


def test_args_of_the_wrong_type(model, digits):
    from transformers import TrainingArguments

    with pytest.raises(TypeError, match="`args` must be an UnlearnConfig, got TrainingArguments"):
        build(model, TrainingArguments(output_dir="x"), digits, forget_classes=[3])


def test_dataset_dict_instead_of_split(model, args, digits):
    with pytest.raises(TypeError, match=r"DatasetDict with splits \['train', 'test'\]"):
        build(model, args, digits, train_dataset=digits, forget_classes=[3])


def test_missing_eval_dataset_when_measuring(model, args, digits):
    with pytest.raises(ValueError, match="`eval_dataset` is required"):
        build(model, args, digits, eval_dataset=None, forget_classes=[3])


def test_errors_leave_no_output(model, args, digits, tmp_path):
    with pytest.raises(ValueError):
        build(model, args, digits, forget_classes=[42])
    assert not any(tmp_path.iterdir())
