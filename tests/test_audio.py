"""Audio classifiers from Hub IDs and audio datasets as the Hub gives them (parquet with an `Audio` feature), without
torchcodec: the recipe's code path offline, resampling, raw samples with a rate column, variable-length waveforms,
label maps, undecodable audio, and every method on AST / Wav2Vec2 / HuBERT."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml
from tiny_models import tiny_classifier

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.data import UnlearningCollator, align_labels, decode_audio, with_model_inputs
from hf_unlearn.examples.spoken_digits import feature_extractor

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "speech_commands" / "ast_gppu.yaml"
HUB_ID = "hf-unlearn-test/tiny-ast-spoken-digits"


@pytest.fixture(scope="module")
def spoken_digits(spoken_digits_dir):
    """`spoken_digits(split, rows=None)`: a split of the generated spoken-digits parquet as `datasets` loads it from
    the Hub layout (`Audio` feature, decoded)."""

    def load(split, rows=None):
        files = {split: str(spoken_digits_dir / f"{split}.parquet")}
        data = datasets.load_dataset("parquet", data_files=files)[split]
        return data if rows is None else data.select(range(rows))

    return load


def save_to_hub_cache(model, extractor, cache: Path, repo_id: str) -> None:
    """What a download leaves in the Hugging Face cache: models--ORG--NAME/snapshots/<commit>/ and refs/main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    model.save_pretrained(repo / "snapshots" / commit)
    extractor.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_the_recipe_unlearns_a_class_by_name_from_a_hub_id_offline_without_torchcodec(
    trained_tiny_ast, spoken_digits, spoken_digits_dir, tmp_path
):
    """The Speech Commands recipe's own command and config, pointed at a small AST saved under a Hub ID in a fresh
    Hugging Face cache and at the spoken-digits parquet (its `Audio` column cannot be decoded here)."""
    assert importlib.util.find_spec("torchcodec") is None
    with pytest.raises(ImportError, match="torchcodec"):
        spoken_digits("test")[0]["audio"]  # what a user without torchcodec hits with plain `datasets`

    model, extractor = trained_tiny_ast
    save_to_hub_cache(model, extractor, tmp_path / "cache", HUB_ID)
    job = yaml.safe_load(RECIPE.read_text())
    job.update(
        model_name_or_path=HUB_ID,
        dataset_name="parquet",
        dataset_config=None,
        data_files={split: str(spoken_digits_dir / f"{split}.parquet") for split in ("train", "test")},
        forget_classes=["three"],
        output_dir=str(tmp_path / "out"),
        max_metric_train_samples=300,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(job))
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    command = [sys.executable, "-m", "hf_unlearn", "unlearn", "--config", str(config)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "<- forgotten" in completed.stdout  # the report was printed

    results = json.loads((tmp_path / "out" / "unlearning_results.json").read_text())
    assert results["forget"]["classes"] == ["three"] and results["method"] == "gppu"
    assert results["dataset"]["name"] == spoken_digits_dir.name and results["modality"] == "audio"
    assert (tmp_path / "out" / "README.md").is_file() and (tmp_path / "out" / "per_class_accuracy.png").is_file()
    original, metrics = results["original_metrics"], results["metrics"]
    assert original["forget_accuracy"] >= 0.8 and metrics["forget_accuracy"] <= 0.05
    assert metrics["retain_accuracy"] >= original["retain_accuracy"] - 0.05
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    saved = AutoModelForAudioClassification.from_pretrained(tmp_path / "out")
    assert saved.config.unlearned_classes == [3]
    assert AutoFeatureExtractor.from_pretrained(tmp_path / "out").sampling_rate == 16000

    # Nothing is overwritten silently: the same job again into the same folder is refused.
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode != 0 and "already holds files" in again.stderr


def band_limited_signal(rate, seconds=1.0):
    """Speech-band tones (300 Hz to 3.1 kHz) under an envelope: every rate here represents it exactly."""
    t = np.arange(int(rate * seconds)) / rate
    envelope = np.exp(-((t - 0.5) ** 2) / 0.02)
    tones = np.sin(2 * np.pi * 300 * t) + 0.5 * np.sin(2 * np.pi * 1250 * t + 0.3) + 0.3 * np.sin(2 * np.pi * 3100 * t)
    return (envelope * tones).astype(np.float32)


@pytest.mark.parametrize("rate", [8000, 22050])
def test_resampled_audio_gives_the_features_of_16khz_audio(rate):
    """On the mel bins that carry the signal (below 3.5 kHz; above, both are at the log floor, where resampling
    filters leave -100 dB differences), 8 kHz and 22.05 kHz audio gives the features of the same audio at 16 kHz."""
    extractor = feature_extractor()  # 16 kHz, 64 mel bins
    signal_bins = 45  # mel bins below 3.5 kHz of 64 up to 8 kHz

    def features(waveform):
        return extractor(waveform, sampling_rate=16000, return_tensors="np")["input_values"][0][:, :signal_bins]

    reference = features(band_limited_signal(16000))
    resampled = decode_audio({"array": band_limited_signal(rate), "sampling_rate": rate}, 16000)
    assert len(resampled) == 16000
    np.testing.assert_allclose(features(resampled), reference, atol=0.03)
    # Read at the wrong rate, the same samples give other features: the comparison can fail.
    misread = decode_audio({"array": band_limited_signal(rate), "sampling_rate": 16000}, 16000)
    assert np.abs(features(np.resize(misread, 16000)) - reference).max() > 0.3


def test_raw_samples_with_a_sampling_rate_column():
    collator = UnlearningCollator("label", feature_extractor())
    waveform = band_limited_signal(8000)
    with_rate_column = collator([{"audio": waveform.tolist(), "sampling_rate": 8000, "label": 1}])
    as_dict = collator([{"audio": {"array": waveform, "sampling_rate": 8000}, "label": 1}])
    torch.testing.assert_close(with_rate_column["input_values"], as_dict["input_values"])
    with pytest.raises(ValueError, match="no sampling rate: add a `sampling_rate` column"):
        collator([{"audio": waveform.tolist(), "label": 1}])


def test_variable_length_waveforms_are_padded_by_the_extractor():
    """Wav2Vec2-style inputs computed once per row (cached with `datasets.map`) keep their own length and are padded
    per batch, with the attention mask marking the real samples."""
    from transformers import Wav2Vec2FeatureExtractor

    extractor = Wav2Vec2FeatureExtractor(return_attention_mask=True)
    lengths = [8000, 12000, 16000, 9000]
    rows = {
        "audio": [band_limited_signal(16000, n / 16000).tolist() for n in lengths],
        "sampling_rate": [16000] * 4,
        "label": [0, 1, 0, 1],
    }
    collator = UnlearningCollator("label", extractor)
    cached = with_model_inputs(datasets.Dataset.from_dict(rows), collator)
    assert cached.column_names == ["label", "input_values", "attention_mask"]
    assert [len(row["input_values"]) for row in cached] == lengths
    batch = collator([cached[i] for i in range(4)])
    assert batch["input_values"].shape == (4, 16000)
    assert batch["attention_mask"].sum(1).tolist() == lengths
    on_the_fly = collator([{name: rows[name][i] for name in rows} for i in range(4)])
    torch.testing.assert_close(batch["input_values"], on_the_fly["input_values"])


def test_undecodable_audio_names_both_decoders():
    with pytest.raises(ValueError, match=r"soundfile \(libsndfile.*torchcodec"):
        decode_audio({"bytes": b"this is not audio", "path": "clip.xyz"}, 16000)


def test_labels_numbered_differently_from_the_model_are_refused_then_aligned(trained_tiny_ast, spoken_digits, tmp_path):
    model, extractor = trained_tiny_ast
    test = spoken_digits("test", 60)
    names = test.features["label"].names
    reordered = test.cast_column("label", datasets.ClassLabel(names=names[::-1]))  # same ids, other names
    args = UnlearnConfig(output_dir=str(tmp_path), method="finetune", max_steps=1, disable_tqdm=True)
    with pytest.raises(ValueError, match=r"numbers its labels differently.*0: dataset 'nine' vs model 'zero'"):
        UnlearningTrainer(model, args, train_dataset=reordered, eval_dataset=test, processing_class=extractor, forget_classes=["three"])  # fmt: skip

    aligned = align_labels(reordered, model.config.label2id)
    assert aligned.features["label"].names == names
    assert [names[i] for i in aligned["label"]] == [names[::-1][i] for i in reordered["label"]]  # each row's word kept

    # Labels the model lacks are dropped; ids beyond the model's classes are refused with the fix.
    extra = test.cast_column("label", datasets.ClassLabel(names=[*names, "_silence_"]))
    silence = datasets.concatenate_datasets([extra, extra.select(range(5)).map(lambda row: {"label": 10})]).cast_column(
        "label", extra.features["label"]
    )
    with pytest.raises(ValueError, match=r"label ids 0\.\.10, but the model has 10 classes.*align_labels"):
        UnlearningTrainer(model, args, train_dataset=silence, eval_dataset=test, processing_class=extractor, forget_classes=[3])  # fmt: skip
    assert len(align_labels(silence, model.config.label2id)) == len(test)


# AST: 32 mel bins x 40 frames; Wav2Vec2 / HuBERT: convolutions striding 80 samples (200 frames a second of 16 kHz
# audio; the real models stride 320) so attention stays small.
AUDIO_FAMILIES = {"ast": {}, "wav2vec2": {"conv_stride": (10, 8), "conv_kernel": (10, 8)}}
AUDIO_FAMILIES["hubert"] = AUDIO_FAMILIES["wav2vec2"]
METHOD_KWARGS = {
    "svd_projection": {"num_samples": 8, "alpha_r_grid": [10.0], "alpha_f_grid": [3.0]},
    "gppu": {"stop_when_recovered": False, "num_neighbors": 3},
}


@pytest.fixture(scope="module")
def four_word_audio(spoken_digits):
    """48 train / 16 eval clips of "zero".."three" as the Hub layout gives them (`Audio` feature, decoded)."""

    def first_of_each(part, per_class):
        labels = np.asarray(part.with_format(None)["label"])
        return part.select(np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(4)])))

    return {"train": first_of_each(spoken_digits("train"), 12), "test": first_of_each(spoken_digits("test"), 4)}


@pytest.mark.parametrize("family", list(AUDIO_FAMILIES))
@pytest.mark.parametrize(
    "method", ["retrain", "finetune", "gradient_ascent", "neggrad_plus", "random_label", "svd_projection", "gppu"]
)
def test_every_method_runs_on_every_audio_family_from_raw_audio(family, method, four_word_audio, tmp_path):
    from transformers import ASTFeatureExtractor, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    model, _ = tiny_classifier(family, num_layers=2, **AUDIO_FAMILIES[family])
    if family == "ast":
        extractor = ASTFeatureExtractor(num_mel_bins=32, max_length=40)
    else:
        extractor = Wav2Vec2FeatureExtractor()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    args = UnlearnConfig(
        output_dir=str(tmp_path), method=method, method_kwargs=METHOD_KWARGS.get(method), max_steps=2,
        learning_rate=1e-3, per_device_train_batch_size=8, eval_before_unlearn=False, disable_tqdm=True,
        report_to="none", dataloader_pin_memory=False,
    )  # fmt: skip
    trainer = UnlearningTrainer(
        model, args, train_dataset=four_word_audio["train"], eval_dataset=four_word_audio["test"],
        processing_class=extractor, forget_classes=[1],
    )  # fmt: skip
    result = trainer.unlearn()
    assert any(not torch.equal(before[name], value) for name, value in result.model.state_dict().items())
    assert len(result.metrics["per_class_accuracy"]) == 4  # every eval row of the 4 words scored, through the extractor
    assert result.metrics["unlearn_seconds"] > 0
