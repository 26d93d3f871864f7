"""A small spoken-words audio set generated in a few seconds, in the layout of an audio dataset on the Hugging Face
Hub (parquet, an `audio` column of `{"bytes": FLAC, "path": name}` that records the `datasets` `Audio` feature, a
`ClassLabel` `label`, `speaker` and `word`), so the audio tests need no file from outside the repository.

Each of the 10 "words" ("zero".."nine") is two syllables of a word-specific chord (two of five pitches); every clip
draws a speaker (all pitches scaled by 0.9-1.1), a speed, a position in the 1 s clip, a gain and background noise at
15-35 dB SNR. Train and test speakers are drawn independently.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SAMPLING_RATE = 16_000
# Each word sounds two of five pitches at once (Hz; neighbours 1.8x apart, so speakers never blur two words).
PITCHES = (300.0, 540.0, 970.0, 1750.0, 3150.0)
CHORDS = [(PITCHES[i], PITCHES[j]) for i in range(5) for j in range(i + 1, 5)]


def spoken_word(word: int, rng: np.random.Generator) -> np.ndarray:
    """One 1 s clip of `WORDS[word]` (float32 in [-1, 1]): two syllables of the word's chord."""
    scale, speed = rng.uniform(0.9, 1.1), rng.uniform(0.8, 1.2)
    syllable = int(0.22 * speed * SAMPLING_RATE)
    gap = np.zeros(int(0.05 * speed * SAMPLING_RATE))
    t = np.arange(syllable) / SAMPLING_RATE
    chord = sum(np.sin(2 * np.pi * pitch * scale * t + rng.uniform(0, 2 * np.pi)) for pitch in CHORDS[word])
    syllable_wave = chord * np.hanning(syllable)
    voice = np.concatenate([syllable_wave, gap, syllable_wave]) * rng.uniform(0.3, 1.0) / 2
    clip = np.zeros(SAMPLING_RATE)
    start = rng.integers(0, SAMPLING_RATE - len(voice))
    clip[start : start + len(voice)] = voice
    noise = rng.standard_normal(SAMPLING_RATE)
    noise *= np.sqrt(np.mean(voice**2) / 10 ** (rng.uniform(15, 35) / 10)) / noise.std()
    return np.clip(clip + noise, -1, 1).astype(np.float32)


def write_spoken_words(folder: str | Path, train_per_word: int = 60, test_per_word: int = 20, seed: int = 0) -> Path:
    """`folder/train.parquet` and `folder/test.parquet` (rows shuffled); returns `folder`."""
    import datasets
    import soundfile

    rng = np.random.default_rng(seed)
    features = datasets.Features({
        "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
        "label": datasets.ClassLabel(names=WORDS),
        "speaker": datasets.Value("string"),
        "word": datasets.Value("string"),
    })  # fmt: skip
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split, per_word in (("train", train_per_word), ("test", test_per_word)):
        rows = []
        for word in rng.permutation(np.repeat(np.arange(len(WORDS)), per_word)):
            buffer = io.BytesIO()
            soundfile.write(buffer, spoken_word(int(word), rng), SAMPLING_RATE, format="FLAC", subtype="PCM_16")
            name = f"{split}_{len(rows):04d}_{WORDS[word]}.flac"
            rows.append({"audio": {"bytes": buffer.getvalue(), "path": name}, "label": int(word),
                         "speaker": f"{split}-{len(rows) % 7}", "word": WORDS[word]})  # fmt: skip
        # Built as a plain {bytes, path} struct, then cast: encoding through the Audio feature would need torchcodec.
        part = datasets.Dataset.from_list(rows, features=features)
        part.cast_column("audio", datasets.Audio(sampling_rate=SAMPLING_RATE)).to_parquet(str(folder / f"{split}.parquet"))
    return folder
