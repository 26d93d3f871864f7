"""Spoken digits (an audio benchmark in the Hub's parquet layout) as log-mel features, with a small Audio
Spectrogram Transformer built from a config: the audio counterpart of `hf_unlearn.digits`.

The clips (1 s, 16 kHz, 10 words "zero".."nine") are read from parquet with the `Audio` feature left undecoded and
decoded with soundfile (no torchcodec), then turned into `input_values` once by `ASTFeatureExtractor` (numpy
filter banks, no torchaudio), so training and unlearning never touch the audio again.

```python
>>> from hf_unlearn.spoken_digits import load_spoken_digits, ast_classifier
>>> data = load_spoken_digits("path/to/spoken_digits")   # train.parquet / test.parquet
>>> model = ast_classifier(data["train"].features["label"].names)
```
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import decode_audio
from .digits import label_maps

SAMPLING_RATE = 16_000
# 64 mel bins x 100 frames (10 ms hop: the whole 1 s clip); 16 x 16 patches, stride 16 in frequency and 8 in
# time: 4 x 11 patches.
FEATURES = {"num_mel_bins": 64, "max_length": 100}
DEFAULT_TRAINING = {"epochs": 30, "learning_rate": 3e-3}


def feature_extractor():
    from transformers import ASTFeatureExtractor

    return ASTFeatureExtractor(sampling_rate=SAMPLING_RATE, **FEATURES)


def load_spoken_digits(data_dir: str | Path):
    """`DatasetDict` (`train` / `test`) with `input_values` (float32, frames x mel bins) and `label` (`ClassLabel`)
    from the `train.parquet` / `test.parquet` in `data_dir`."""
    import datasets

    data_dir = Path(data_dir)
    files = {split: str(data_dir / f"{split}.parquet") for split in ("train", "test")}
    missing = [path for path in files.values() if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(
            f"`data_dir={str(data_dir)!r}` lacks {missing}: expected train.parquet and test.parquet."
        )
    raw = datasets.load_dataset("parquet", data_files=files).cast_column("audio", datasets.Audio(decode=False))
    extractor = feature_extractor()
    features = datasets.Features(
        {
            "input_values": datasets.Array2D((FEATURES["max_length"], FEATURES["num_mel_bins"]), "float32"),
            "label": raw["train"].features["label"],
        }
    )

    def extract(batch):
        waveforms = [decode_audio(audio, SAMPLING_RATE) for audio in batch["audio"]]
        values = extractor(waveforms, sampling_rate=SAMPLING_RATE, return_tensors="np")["input_values"]
        return {"input_values": values.astype(np.float32), "label": batch["label"]}

    return raw.map(extract, batched=True, remove_columns=raw["train"].column_names, features=features)


def ast_classifier(label_names, seed: int = 0, **overrides):
    """A small, randomly initialised `ASTForAudioClassification` (2 layers, 64 wide) for `FEATURES`-sized inputs."""
    from transformers import ASTConfig, ASTForAudioClassification, set_seed

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
