"""`JobArguments`: what an `hf-unlearn unlearn` job works on (model, data, classes, card fields). A job's YAML holds
these and `UnlearnConfig` fields; this module is light (no torch) so the command line's help stays fast."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields


@dataclass
class JobArguments:
    """What an unlearning job works on. Every other key of a job's config is an `UnlearnConfig` field."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Hub ID or local path of the model to unlearn from: an image or audio classifier, a saved GAN "
            "(`GANPair`) or a class-conditional diffusers pipeline."
        },
    )
    forget_classes: list[str] | None = field(
        default=None,
        metadata={
            "help": "Label names (from the model's config) or ids of the classes to forget. `evaluate` defaults to the "
            "classes the model records as unlearned."
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub ID or local path of the dataset the model was trained on, or a builder such as 'parquet' "
            "with `data_files`."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration, e.g. 'v0.02'."})
    dataset_revision: str | None = field(default=None, metadata={"help": "Dataset revision (branch, tag or commit)."})
    data_files: dict | str | None = field(
        default=None,
        metadata={"help": "For a builder: {split: path(s)}; a JSON object on the command line."},
    )
    judge_model: str | None = field(
        default=None,
        metadata={
            "help": "GANs and diffusion models: Hub ID or path of an image classifier of the same data that judges "
            "the generated samples (which classes they show; the features of the Frechet distance)."
        },
    )
    train_split: str = field(default="train", metadata={"help": "Split the model was trained on (forget/retain)."})
    eval_split: str = field(default="test", metadata={"help": "Held-out split for the metrics."})
    label_column: str = field(default="label", metadata={"help": "Name of the dataset's label column."})
    align_labels: bool = field(
        default=True,
        metadata={
            "help": "Renumber the dataset's label ids to the model's label2id by name and drop rows of labels the "
            "model lacks (e.g. Speech Commands' '_silence_')."
        },
    )
    card_dataset: str | None = field(
        default=None,
        metadata={
            "help": "The dataset's name in the model card (a Hub ID fills its `datasets` field). Default: "
            "`dataset_name` when it is a Hub ID, else the folder of the data files (for a builder such as 'parquet')."
        },
    )
    license: str | None = field(default=None, metadata={"help": "The model card's `license`, e.g. 'apache-2.0'."})
    base_model: str | None = field(
        default=None,
        metadata={"help": "The card's `base_model` (Hub ID). Default: `model_name_or_path` when it is a Hub ID."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many training rows (class-balanced, seeded): quick runs."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many eval rows (class-balanced, seeded)."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Replace an `output_dir` that already holds files: the whole folder is replaced by the new one "
            "(atomically, when everything is written)."
        },
    )

    def __post_init__(self):
        for name in ("model_name_or_path", "dataset_name"):
            if not getattr(self, name):
                raise ValueError(f"`{name}` is required: set it in the job's YAML or pass --{name}.")
        if isinstance(self.data_files, str):
            try:
                self.data_files = json.loads(self.data_files)
            except json.JSONDecodeError as error:
                raise ValueError(f"`data_files` must be a JSON object, got {self.data_files!r} ({error}).") from None
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be a positive integer or None, got {value!r}.")


#: The keys of a job's YAML that describe the job (model, data, classes, card), not the `UnlearnConfig`.
JOB_KEYS = frozenset(f.name for f in fields(JobArguments))
