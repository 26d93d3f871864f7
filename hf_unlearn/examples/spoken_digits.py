"""Spoken digits (an audio benchmark in the Hub's parquet layout) as log-mel features, with a small Audio
Spectrogram Transformer built from a config: the audio counterpart of `hf_unlearn.examples.digits`.

The clips (1 s, 16 kHz, 10 words "zero".."nine") are read from parquet through the library's own audio path
(`Audio` column read undecoded, decoded with soundfile: no torchcodec) and turned into `input_values` once by
`ASTFeatureExtractor` (numpy filter banks, no torchaudio), so training and unlearning never touch the audio again.

```python
>>> from hf_unlearn.examples.spoken_digits import load_spoken_digits, ast_classifier
>>> data = load_spoken_digits("path/to/spoken_digits")   # train.parquet / test.parquet
>>> model = ast_classifier(data["train"].features["label"].names)
```
"""

from __future__ import annotations

import argparse
from pathlib import Path

import datasets
from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification, set_seed

from ..data import UnlearningCollator, label_maps, with_model_inputs, without_audio_decoding
from .digits import train_classifier

SAMPLING_RATE = 16_000
# 64 mel bins x 100 frames (10 ms hop: the whole 1 s clip); 16 x 16 patches, stride 16 in frequency and 8 in
# time: 4 x 11 patches.
FEATURES = {"num_mel_bins": 64, "max_length": 100}
DEFAULT_TRAINING = {"epochs": 30, "learning_rate": 3e-3}


def feature_extractor():
    return ASTFeatureExtractor(sampling_rate=SAMPLING_RATE, **FEATURES)


def load_spoken_digits(data_dir: str | Path):
    """`DatasetDict` (`train` / `test`) with `input_values` (float32, frames x mel bins) and `label` (`ClassLabel`)
    from the `train.parquet` / `test.parquet` in `data_dir`."""
    data_dir = Path(data_dir)
    files = {split: str(data_dir / f"{split}.parquet") for split in ("train", "test")}
    missing = [path for path in files.values() if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(
            f"`data_dir={str(data_dir)!r}` lacks {missing}: expected train.parquet and test.parquet."
        )
    raw = datasets.load_dataset("parquet", data_files=files)
    collator = UnlearningCollator("label", feature_extractor())
    return datasets.DatasetDict(
        {split: with_model_inputs(without_audio_decoding(part), collator) for split, part in raw.items()}
    )


def ast_classifier(label_names, seed: int = 0, **overrides):
    """A small, randomly initialised `ASTForAudioClassification` (2 layers, 64 wide) for `FEATURES`-sized inputs."""
    shape = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "patch_size": 16,
        "frequency_stride": 16,
        "time_stride": 8,
        **FEATURES,
    }
    set_seed(seed)
    config = ASTConfig(**label_maps(label_names), **{**shape, **overrides})
    return ASTForAudioClassification(config)


def prepare_spoken_digits(output_dir: str | Path, data_dir: str | Path, seed: int = 0) -> str:
    """Train the small AST on the spoken digits in `data_dir` and save it with its feature extractor to
    `OUTPUT_DIR/model`, for a `hf-unlearn unlearn` job that reads the parquet files themselves. Returns the path."""
    output = Path(output_dir)
    data = load_spoken_digits(data_dir)
    model = ast_classifier(data["train"].features["label"].names, seed=seed)
    train_classifier(model, data["train"], str(output / "training"), seed=seed, **DEFAULT_TRAINING)
    model.save_pretrained(output / "model")
    feature_extractor().save_pretrained(output / "model")
    return str(output / "model")


def main(argv=None) -> None:
    """`python -m hf_unlearn.examples.spoken_digits --output_dir outputs/spoken-digits-ast --data_dir DIR`: prepare the AST job."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--data_dir", required=True, help="folder with train.parquet and test.parquet")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)
    print(f"model: {prepare_spoken_digits(options.output_dir, options.data_dir, options.seed)}")


if __name__ == "__main__":
    main()
