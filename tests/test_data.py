"""Forget/retain splits, subsampling, the collator on raw image and audio columns, and loading by path."""

import numpy as np
import pytest
import torch

from hf_unlearn import UnlearningTrainer
from hf_unlearn.data import (
    UnlearningCollator,
    align_labels,
    decode_audio,
    label_ids,
    numpy_model_inputs,
    resolve_forget_classes,
    split_forget_retain,
    subsample,
)


def test_split_by_class_covers_train_and_eval():
    train = np.array([0, 1, 2, 3, 3, 1])
    test = np.array([3, 0, 3, 2])
    split = split_forget_retain(train, test, forget_classes=[3])
    assert split.forget_indices.tolist() == [3, 4]
    assert split.retain_indices.tolist() == [0, 1, 2, 5]
    assert split.eval_forget_indices.tolist() == [0, 2]
    assert split.eval_retain_indices.tolist() == [1, 3]
    assert split.is_class_level


def test_split_by_indices_keeps_eval_whole():
    split = split_forget_retain(np.arange(10) % 3, np.arange(4), forget_indices=[7, 2, 2])
    assert split.forget_indices.tolist() == [2, 7]
    assert len(split.retain_indices) == 8
    assert split.eval_forget_indices.size == 0 and split.eval_retain_indices.tolist() == [0, 1, 2, 3]
    assert not split.is_class_level


def test_classes_unlearned_before_leave_the_retain_set():
    train = np.array([0, 1, 2, 3, 3, 1, 2])
    test = np.array([2, 0, 3, 2, 1])
    split = split_forget_retain(train, test, forget_classes=[3], unlearned_before=[2])
    assert split.forget_indices.tolist() == [3, 4]
    assert split.retain_indices.tolist() == [0, 1, 5]
    assert split.eval_forget_indices.tolist() == [2]
    assert split.eval_retain_indices.tolist() == [1, 4]
    assert split.eval_unlearned_before_indices.tolist() == [0, 3]
    assert split.unlearned_before == [2]

    samples = split_forget_retain(train, test, forget_indices=[1], unlearned_before=[2])
    assert samples.retain_indices.tolist() == [0, 3, 4, 5]
    assert samples.eval_retain_indices.tolist() == [1, 2, 4]

    again = split_forget_retain(train, test, forget_classes=[2, 3], unlearned_before=[2])
    assert again.forget_indices.tolist() == [2, 3, 4, 6] and again.unlearned_before == []

    with pytest.raises(ValueError, match=r"`forget_classes` or of the classes unlearned before \(\[0, 1, 2\]\)"):
        split_forget_retain(train, test, forget_classes=[3], unlearned_before=[0, 1, 2])


def test_class_balanced_subsample():
    labels = np.array([0] * 50 + [1] * 50 + [2] * 3)
    chosen = subsample(np.arange(len(labels)), 21, seed=0, labels=labels)
    counts = np.bincount(labels[chosen], minlength=3)
    assert len(chosen) == 21 and counts.tolist() == [9, 9, 3]
    assert subsample(np.arange(5), None, seed=0).tolist() == [0, 1, 2, 3, 4]
    assert np.array_equal(subsample(np.arange(100), 10, seed=1), subsample(np.arange(100), 10, seed=1))


def test_forget_classes_by_name_id_and_digit_string():
    label2id = {"cat": 0, "dog": 1, "bird": 2}
    assert resolve_forget_classes(["dog", 2], label2id, 3) == [1, 2]
    assert resolve_forget_classes("cat", label2id, 3) == [0]
    assert resolve_forget_classes(["1"], {}, 3) == [1]
    assert resolve_forget_classes(torch.tensor([2, 0]), label2id, 3) == [0, 2]
    assert resolve_forget_classes(np.array([1]), label2id, 3) == [1]
    with pytest.raises(ValueError, match=r"`forget_classes` must be a class id, a label name or a list of them, got "
                                         r"float 3.0"):  # fmt: skip
        resolve_forget_classes(3.0, label2id, 3)


def test_a_label_name_several_classes_share_must_be_given_as_an_id():
    """ImageNet's id2label names two classes "crane" (the bird, 134; the machine, 517): the name picks neither."""
    from transformers import PretrainedConfig

    from hf_unlearn.data import shared_label_names

    config = PretrainedConfig(id2label={0: "crane", 1: "dog", 2: "crane"})
    assert label_ids(config) == {"dog": 1} and shared_label_names(config) == {"crane": [0, 2]}
    with pytest.raises(ValueError, match=r"'crane', the label of several classes of the model \(ids \[0, 2\]\): "
                                         r"name the class by its id, e.g. `forget_classes=\[0\]`"):  # fmt: skip
        resolve_forget_classes(["crane"], label_ids(config), 3, shared_label_names(config))


def test_names_resolve_through_id2label_and_unlabelled_rows_are_dropped_by_align_labels():
    """Label names mean what `id2label` (every report's names) says, also when `label2id` disagrees with it or is
    unset; `align_labels` drops unlabelled rows (-1) instead of indexing the last class with them."""
    import datasets
    from transformers import PretrainedConfig

    config = PretrainedConfig(id2label={0: "cat", 1: "dog", 2: "bird"})
    config.label2id = {"bird": 0, "cat": 1, "dog": 2}  # sorted by name: disagrees with id2label
    assert label_ids(config) == {"cat": 0, "dog": 1, "bird": 2}
    assert resolve_forget_classes(["dog"], label_ids(config), 3) == [1]

    names = ["bird", "cat", "dog"]  # the dataset's own order
    rows = datasets.Dataset.from_dict({"x": [0, 1, 2, 3, 4], "label": [0, 2, -1, 1, -1]},
                                      features=datasets.Features({"x": datasets.Value("int64"),
                                                                  "label": datasets.ClassLabel(names=names)}))  # fmt: skip
    aligned = align_labels(rows, config)
    assert aligned["x"] == [0, 1, 3]  # the unlabelled rows 2 and 4 dropped
    assert [config.id2label[i] for i in aligned["label"]] == ["bird", "dog", "cat"]
    assert align_labels(rows, label_ids(config))["label"] == aligned["label"]


def test_train_and_eval_must_share_their_label_column_and_names(digits):
    import datasets

    from hf_unlearn import UnlearnConfig
    from hf_unlearn.examples.digits import digits_classifier

    args = UnlearnConfig(output_dir="unused", method="finetune", report_to="none")
    with pytest.raises(ValueError, match="`eval_dataset`'s labels are in 'labels' and `train_dataset`'s in 'label'"):
        UnlearningTrainer(digits_classifier("vit"), args, train_dataset=digits["train"],
                          eval_dataset=digits["test"].rename_column("label", "labels"), forget_classes=[3])  # fmt: skip
    # The label names of both must be one numbering (a split encoded on its own numbers the classes it holds), also
    # when the model's own names (transformers' LABEL_i defaults) cannot show it.
    names = digits["test"].features["label"].names
    shifted = digits["test"].cast_column("label", datasets.ClassLabel(names=[*names[1:], names[0]]))
    unnamed = digits_classifier("vit")
    unnamed.config.id2label = {i: f"LABEL_{i}" for i in range(10)}
    with pytest.raises(ValueError, match="number their labels differently \\(0: train 'zero' vs eval 'one'"):
        UnlearningTrainer(unnamed, args, train_dataset=digits["train"], eval_dataset=shifted, forget_classes=[3])


def test_a_transform_that_changes_labels_is_refused():
    """The forget and retain rows are chosen from the stored labels, the scored rows go through the transform: one
    that remaps labels is refused; one that keeps them (preprocessing inputs) passes."""
    import datasets

    from hf_unlearn.data import check_label_transform

    rows = datasets.Dataset.from_dict({"x": [0.0, 1.0, 2.0, 3.0], "label": [0, 1, 2, 3]})
    check_label_transform(rows, "label", "train_dataset")  # no transform
    check_label_transform(rows.with_transform(lambda batch: {**batch, "x": [2 * v for v in batch["x"]]}), "label",
                          "train_dataset")  # fmt: skip
    remapped = rows.with_transform(lambda batch: {**batch, "label": [9 - v for v in batch["label"]]})
    with pytest.raises(ValueError, match=r"`train_dataset`'s transform changes its 'label' values .*stored \[0, 1, 2, 3\]"):
        check_label_transform(remapped, "label", "train_dataset")


def tiny_rgb_vit_and_processor():
    from transformers import ViTForImageClassification, ViTImageProcessor

    from hf_unlearn.examples.digits import tiny_vit_config

    names = [str(i) for i in range(10)]
    config = tiny_vit_config(
        num_channels=3, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
    )
    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    return ViTForImageClassification(config), processor


def image_dataset(digits, split, rows):
    import datasets
    from PIL import Image

    part = digits[split].select(range(rows))
    images = [Image.fromarray((np.asarray(v)[0] * 255).astype(np.uint8), mode="L") for v in part["pixel_values"]]
    return datasets.Dataset.from_dict(
        {"image": images, "label": part["label"]},
        features=datasets.Features({"image": datasets.Image(), "label": part.features["label"]}),
    )


def test_model_inputs_are_read_as_numpy_arrays_with_the_same_values(trained, digits, make_args):
    """A dataset without a format: its model inputs are read as numpy arrays (not python lists of floats), the batches
    the collator makes are the same tensors, and the trainer's views read them that way. A dataset with a format of its
    own, or a transform, is left alone."""
    import datasets

    pixels = np.random.default_rng(0).standard_normal((6, 3, 4, 4)).astype(np.float32)
    features = datasets.Features({"pixel_values": datasets.Array3D((3, 4, 4), "float32"), "label": datasets.Value("int64"),
                                  "note": datasets.Value("string")})  # fmt: skip
    rows = datasets.Dataset.from_dict({"pixel_values": pixels, "label": [0, 1, 2, 0, 1, 2], "note": list("abcdef")},
                                      features=features)  # fmt: skip
    read = numpy_model_inputs(rows)
    assert isinstance(read[0]["pixel_values"], np.ndarray) and isinstance(rows[0]["pixel_values"], list)
    assert read[0]["note"] == "a" and read[0]["label"] == 0
    collate = UnlearningCollator()
    for got, expected in zip(collate([read[i] for i in range(6)]).values(), collate([rows[i] for i in range(6)]).values(),
                             strict=True):  # fmt: skip
        assert torch.equal(got, expected)
    torch_format = rows.with_format("torch")
    assert numpy_model_inputs(torch_format) is torch_format and numpy_model_inputs(None) is None
    transformed = rows.with_transform(lambda batch: batch)
    assert numpy_model_inputs(transformed) is transformed
    trainer = UnlearningTrainer(trained("vit"), make_args("finetune"), train_dataset=digits["train"],
                                eval_dataset=digits["test"], forget_classes=[3])  # fmt: skip
    assert isinstance(trainer.retain_view[0]["pixel_values"], np.ndarray)
    assert isinstance(trainer.metric_views["eval_retain"][0]["pixel_values"], np.ndarray)


def test_raw_image_column_is_processed_on_the_fly(digits, make_args):
    model, processor = tiny_rgb_vit_and_processor()
    train, test = image_dataset(digits, "train", 200), image_dataset(digits, "test", 60)
    batch = UnlearningCollator("label", processor)([train[0], train[1]])
    assert batch["pixel_values"].shape == (2, 3, 16, 16) and batch["labels"].tolist() == train[:2]["label"]

    result = UnlearningTrainer(
        model,
        make_args("finetune", max_steps=2),
        train_dataset=train,
        eval_dataset=test,
        processing_class=processor,
        forget_classes=[3],
    ).unlearn()
    # every eval row went through the processor and was scored: each of the 10 classes has an accuracy
    assert len(result.metrics["per_class_accuracy"]) == len(result.original_metrics["per_class_accuracy"]) == 10


def test_raw_image_column_without_processor_fails_clearly(digits, make_args):
    model, _ = tiny_rgb_vit_and_processor()
    train, test = image_dataset(digits, "train", 50), image_dataset(digits, "test", 20)
    trainer = UnlearningTrainer(
        model, make_args("finetune", max_steps=1), train_dataset=train, eval_dataset=test, forget_classes=[3]
    )
    with pytest.raises(ValueError, match="raw 'image' column but no `processing_class`"):
        trainer.unlearn()


def test_model_loaded_from_a_local_path_with_its_processor(digits, make_args, tmp_path):
    model, processor = tiny_rgb_vit_and_processor()
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    train, test = image_dataset(digits, "train", 100), image_dataset(digits, "test", 40)
    trainer = UnlearningTrainer(
        str(tmp_path / "model"),
        make_args("finetune", max_steps=1),
        train_dataset=train,
        eval_dataset=test,
        forget_classes=["3"],
    )
    assert type(trainer.model).__name__ == "ViTForImageClassification"
    assert trainer.processing_class is not None
    result = trainer.unlearn()
    assert result.forget_classes == [3]


def test_decode_audio_resamples():
    rate, seconds, tone = 8000, 0.5, 440.0
    t = np.arange(int(rate * seconds)) / rate
    waveform = decode_audio({"array": np.sin(2 * np.pi * tone * t), "sampling_rate": rate}, 16000)
    t16 = np.arange(int(16000 * seconds)) / 16000
    assert waveform.shape == t16.shape
    # Away from the edges the resampled tone matches the tone sampled at 16 kHz.
    np.testing.assert_allclose(waveform[400:-400], np.sin(2 * np.pi * tone * t16)[400:-400], atol=1e-2)


def test_audio_bytes_decode_without_torchcodec_and_collate(spoken_digits_dir):
    import datasets
    from transformers import ASTFeatureExtractor

    data = datasets.load_dataset("parquet", data_files={"test": str(spoken_digits_dir / "test.parquet")})["test"]
    data = data.cast_column("audio", datasets.Audio(decode=False)).select(range(3))
    waveform = decode_audio(data[0]["audio"], 16000)
    assert waveform.dtype == np.float32 and waveform.ndim == 1 and len(waveform) == 16000
    extractor = ASTFeatureExtractor(max_length=100)
    batch = UnlearningCollator("label", extractor)([data[i] for i in range(3)])
    assert batch["input_values"].shape == (3, 100, 128)
    assert batch["labels"].tolist() == data["label"]
    assert torch.isfinite(batch["input_values"]).all()


def test_spoken_digits_become_ast_features_that_a_small_ast_accepts(spoken_digits_dir, tmp_path):
    import pyarrow.parquet as pq

    from hf_unlearn.examples.spoken_digits import FEATURES, ast_classifier, feature_extractor, load_spoken_digits

    for split in ("train", "test"):  # a few rows of each split, same layout
        pq.write_table(pq.read_table(spoken_digits_dir / f"{split}.parquet").slice(0, 4),
                       tmp_path / f"{split}.parquet")  # fmt: skip
    data = load_spoken_digits(tmp_path)
    row = data["train"][0]
    assert np.asarray(row["input_values"]).shape == (FEATURES["max_length"], FEATURES["num_mel_bins"])
    names = data["train"].features["label"].names
    assert names[3] == "three" and len(names) == 10
    # The stored features are those of the extractor on the decoded clip.
    raw = pq.read_table(tmp_path / "train.parquet").to_pylist()[0]
    expected = feature_extractor()(decode_audio(raw["audio"], 16000), sampling_rate=16000, return_tensors="np")
    np.testing.assert_allclose(np.asarray(row["input_values"]), expected["input_values"][0], rtol=1e-5, atol=1e-5)
    logits = ast_classifier(names)(
        input_values=torch.tensor(np.asarray(data["test"]["input_values"], dtype=np.float32))
    ).logits
    assert logits.shape == (4, 10)
    with pytest.raises(FileNotFoundError, match="train.parquet"):
        load_spoken_digits(tmp_path / "missing")


def test_lists_of_labels_are_refused_naming_the_column():
    """Multi-hot rows would pass as a 2-D integer array, and the forget mask would index flattened positions."""
    import datasets

    from hf_unlearn.data import dataset_labels

    rows = datasets.Dataset.from_dict({"x": [0, 1], "labels": [[1, 0, 1], [0, 1, 0]]})
    with pytest.raises(ValueError, match=r"'labels' holds a list per row \(shape \(2, 3\)\)"):
        dataset_labels(rows, "labels")


def test_align_labels_tells_apart_model_classes_that_share_a_name():
    """The model's classes keep their ids (a name two classes share becomes "name (id)"); a dataset label naming
    such a shared class cannot be placed and is an error."""
    import datasets
    from transformers import PretrainedConfig

    config = PretrainedConfig(id2label={0: "crane", 1: "dog", 2: "crane"})
    rows = datasets.Dataset.from_dict({"x": [0, 1, 2], "label": [0, 1, 0]},
                                      features=datasets.Features({"x": datasets.Value("int64"),
                                                                  "label": datasets.ClassLabel(names=["dog", "cat"])}))  # fmt: skip
    aligned = align_labels(rows, config)
    assert aligned.features["label"].names == ["crane (0)", "dog", "crane (2)"]
    assert aligned["label"] == [1, 1] and aligned["x"] == [0, 2]
    clash = rows.cast_column("label", datasets.ClassLabel(names=["dog", "Crane"]))
    with pytest.raises(ValueError, match=r"\['Crane'\] name several classes of the model \(ids \{'crane': \[0, 2\]\}\)"):
        align_labels(clash, config)
