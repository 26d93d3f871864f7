"""Audio benchmark: spoken digits exactly as the Hub layout gives them (parquet, `Audio` feature; torchcodec is not
installed, so `datasets` cannot decode it), a small AST trained by the benchmark, and every available method forgetting
"three", each against `retrain` in one run: forget/retain accuracy, both MIAs, seconds, time / retrain.

    python benchmarks/audio.py --output benchmarks/results/audio.md [--audio-dir ../shared/data/spoken_digits]

The model inputs come from the library's own audio path (FLAC bytes decoded with soundfile, resampled if needed,
ASTFeatureExtractor), computed once per split with `cache_features` (a `datasets.map`, cached on disk). The original
model is trained on those same inputs. Budgets: `retrain` uses the original's recipe, the other methods their
`hf_unlearn.examples.digits.unlearn_budgets()` entry (chosen on image digits, used unchanged here).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import datasets
import torch
from common import write_results
from digits import compare_methods, markdown_table

from hf_unlearn import available_methods, get_method, spoken_digits
from hf_unlearn.data import UnlearningCollator, with_model_inputs, without_audio_decoding
from hf_unlearn.examples.digits import train_classifier, unlearn_budgets

DEFAULT_AUDIO_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "spoken_digits"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="benchmarks/results/audio.md")
    parser.add_argument("--audio-dir", default=str(DEFAULT_AUDIO_DIR))
    parser.add_argument("--forget-class", default="three")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)

    files = {split: str(Path(options.audio_dir) / f"{split}.parquet") for split in ("train", "test")}
    raw = datasets.load_dataset("parquet", data_files=files)  # Audio feature, decode=True: needs torchcodec
    extractor = spoken_digits.feature_extractor()
    names = raw["train"].features["label"].names
    forget_class = names.index(options.forget_class)

    # The audio path, timed on every clip (not through `datasets.map`, whose cache would make a rerun look free):
    # bytes decoded with soundfile, resampled if needed, turned into AST inputs.
    collator = UnlearningCollator("label", extractor)
    undecoded = {split: without_audio_decoding(part) for split, part in raw.items()}
    start = time.perf_counter()
    for part in undecoded.values():
        for first in range(0, len(part), 64):
            columns = part[first : first + 64]
            collator.model_inputs(
                [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
            )
    feature_seconds = time.perf_counter() - start
    clips = sum(len(part) for part in undecoded.values())
    # The original model is trained on the inputs the library computes from the raw audio.
    features = {split: with_model_inputs(part, collator) for split, part in undecoded.items()}
    print(f"Model inputs for {clips} clips in {feature_seconds:.1f} s", flush=True)
    recipe = spoken_digits.DEFAULT_TRAINING
    start = time.perf_counter()
    model = train_classifier(
        spoken_digits.ast_classifier(names, seed=options.seed), features["train"], tempfile.mkdtemp(),
        seed=options.seed, disable_tqdm=True, **recipe,
    )  # fmt: skip
    train_seconds = time.perf_counter() - start

    methods = [method for method in available_methods()
               if method != "retrain" and "classifier" in get_method(method).method_class.model_kinds]
    rows = compare_methods(
        model, raw, recipe, forget_class, options.seed, methods, label="ast", processing_class=extractor,
        cache_features=True,
    )  # fmt: skip
    result = {"train_seconds": train_seconds, "rows": rows}

    command = "python benchmarks/audio.py " + " ".join(sys.argv[1:] if argv is None else argv)
    torchcodec = "installed" if importlib.util.find_spec("torchcodec") else "not installed"
    lines = [
        "# Audio benchmark: spoken digits from the Hub parquet layout",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, CPU; torchcodec "
        f"{torchcodec}. Seed {options.seed}. {len(raw['train'])} train / {len(raw['test'])} test clips (1 s, 16 kHz, "
        "speaker-independent test split). Test-split accuracies; MIA rates on the forget training rows; time = "
        "`unlearn_seconds` (the method alone), each method in the same run as its retrain.  ",
        f"Audio path: FLAC bytes decoded with soundfile and turned into AST inputs (64 mel bins x 100 frames) for "
        f"{clips} clips in {feature_seconds:.1f} s ({1000 * feature_seconds / clips:.1f} ms a clip), once per split "
        "(`cache_features`).  ",
        "Budgets: " + json.dumps({method: unlearn_budgets()[method] for method in methods}),
        "",
        markdown_table("spoken digits, small AST (2 layers, 64 wide)", result, options.forget_class),
        "",
    ]
    write_results(options.output, "\n".join(lines), {"feature_seconds": feature_seconds, "clips": clips, **result})


if __name__ == "__main__":
    main()
