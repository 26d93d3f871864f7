"""The `hf-unlearn` command (also `python -m hf_unlearn`).

    hf-unlearn unlearn --config recipes/speech_commands/ast_gppu.yaml [--forget_classes no --learning_rate 1e-5 ...]
    hf-unlearn evaluate --config JOB.yaml --model_name_or_path outputs/unlearned [--reference_model outputs/retrained]
    hf-unlearn methods

`unlearn` runs one unlearning job. Its YAML config holds `JobArguments` fields (which model, which data, which
classes) and `UnlearnConfig` fields (which method, its hyperparameters, the training budget); any of them can be
overridden on the command line. The job loads the model by Hub ID or local path: a classifier with its processor,
or a generator (a saved GAN, `hf_unlearn.gan.GANPair`, or a class-conditional diffusers pipeline, loaded as
`hf_unlearn.diffusion.DiffusionModel`) with the classifier named by `judge_model` to judge its samples. It loads the
dataset with `datasets.load_dataset` (audio is decoded with soundfile, so torchcodec is not needed), renumbers the
dataset's labels to the model's (`align_labels`), unlearns, prints the report and saves the unlearned model, its
processor (if it has one), its model card (README.md, with the per-class plot) and `unlearning_results.json` to
`output_dir`.

This is the one module that imports inside functions: each command imports what it runs, so that `hf-unlearn --help`
answers without loading torch (a test keeps it so).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from .jobs import JobArguments
from .report import format_report

logger = logging.getLogger(__name__)

COMMANDS = {
    "unlearn": "run one unlearning job from a YAML config (with command-line overrides)",
    "evaluate": "measure a saved model: forget / retain / per-class accuracy, membership attacks, gap to a reference",
    "methods": "list the unlearning methods with a line on each and their papers",
}


@dataclass
class EvaluateArguments:
    """What `hf-unlearn evaluate` adds to a job's arguments."""

    reference_model: str | None = field(
        default=None,
        metadata={"help": "Hub ID or path of a model retrained without the forget set: adds its metrics and the gaps."},
    )
    results_file: str | None = field(default=None, metadata={"help": "Also write the metrics to this JSON file."})


def parse_job(argv: list[str], extra=(), command: str = "unlearn"):
    """`(JobArguments, *extra, UnlearnConfig)` from `--config FILE.yaml` (optional) and command-line overrides."""
    from transformers import HfArgumentParser

    from .config import UnlearnConfig

    dataclass_types = (JobArguments, *extra, UnlearnConfig)
    parser = HfArgumentParser(dataclass_types, prog=f"hf-unlearn {command}", description=__doc__,
                              usage=f"hf-unlearn {command} [--config JOB.yaml] [--OPTION VALUE ...]")  # fmt: skip
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--config", help="YAML file of JobArguments and UnlearnConfig fields.")
    _group_help(parser, dataclass_types)
    known, _ = parser.parse_known_args(argv) if not {"-h", "--help"} & set(argv) else (None, None)
    if known is not None and known.config:
        values = yaml.safe_load(Path(known.config).read_text()) or {}
        valid = {f.name for kind in dataclass_types for f in fields(kind)}
        unknown = sorted(set(values) - valid)
        if unknown:
            kinds = " nor ".join(kind.__name__ for kind in dataclass_types)
            raise ValueError(
                f"`--config {known.config}` has keys that are neither {kinds} fields: {unknown}. "
                f"See `hf-unlearn {command} --help`."
            )
        argv = _merged_dict_options(argv, values)
        parser.set_defaults(**values)
    return tuple(parser.parse_args_into_dataclasses(args=argv)[: len(dataclass_types)])


#: Options whose value is a dict: given on the command line over a YAML that has one, they update it key by key.
DICT_OPTIONS = ("method_kwargs", "peft_config")


def _merged_dict_options(argv: list[str], values: dict) -> list[str]:
    """`argv` with `--method_kwargs` / `--peft_config` values merged over the YAML's dicts (`values`), key by key,
    instead of replacing them whole (which dropped a recipe's other settings silently). A `--method` other than the
    YAML's drops the YAML's `method_kwargs`, which are that other method's (said in the log)."""
    argv = list(argv)
    options = {}
    for index, argument in enumerate(argv):
        name, equals, value = argument.partition("=")
        if name.startswith("--") and name[2:] in (*DICT_OPTIONS, "method"):
            options[name[2:]] = (index, equals, value if equals else (argv[index + 1] if index + 1 < len(argv) else None))
    method = options.get("method", (None, "", values.get("method")))[2]
    if "method" in options and values.get("method") not in (None, method) and values.get("method_kwargs"):
        logger.warning(f"`--method {method}` replaces the YAML's '{values['method']}': its `method_kwargs` "
                       f"{values['method_kwargs']} are that method's and are dropped.")
        values.pop("method_kwargs")
    for name in DICT_OPTIONS:
        if name not in options or not isinstance(values.get(name), dict):
            continue
        index, equals, value = options[name]
        try:
            given = json.loads(value)
        except (TypeError, ValueError):
            continue  # not a JSON object: UnlearnConfig names the error
        if isinstance(given, dict):
            merged = json.dumps({**values[name], **given})
            if equals:
                argv[index] = f"--{name}={merged}"
            else:
                argv[index + 1] = merged
    return argv


def _group_help(parser, dataclass_types) -> None:
    """`--help` lists the job's options first (with `--config`), then the unlearning options, then the
    `TrainingArguments` ones under their own heading, instead of one list of 700 lines in field order."""
    from transformers import TrainingArguments

    training = {f.name for f in fields(TrainingArguments)}
    job = {"config"} | {f.name for kind in dataclass_types[:-1] for f in fields(kind)}
    unlearning = {f.name for f in fields(dataclass_types[-1])} - training
    titles = {
        "job": "job: the model, the data and what to forget",
        "unlearning": "unlearning: the method and how the run is checked (UnlearnConfig)",
        "training": "training: the budget of gradient methods and everything else (transformers.TrainingArguments)",
    }
    groups = {key: parser.add_argument_group(title) for key, title in titles.items()}
    general = parser._optionals  # argparse keeps "options" here; only -h stays in it
    for action in list(general._group_actions):
        key = "job" if action.dest in job else "unlearning" if action.dest in unlearning else (
            "training" if action.dest in training else None)  # fmt: skip
        if key is not None:
            general._group_actions.remove(action)
            groups[key]._group_actions.append(action)
    config = next(action for action in groups["job"]._group_actions if action.dest == "config")
    groups["job"]._group_actions.remove(config)
    groups["job"]._group_actions.insert(0, config)


def load_job_data(job: JobArguments, model, seed: int) -> dict:
    """`{"train", "eval"}` splits of the job's dataset, labels renamed to `label`, aligned to the model, capped."""
    import datasets
    import numpy as np

    from .data import align_labels, dataset_labels, model_label_names, subsample

    files = job.data_files.values() if isinstance(job.data_files, dict) else [job.data_files or []]
    missing = [path for group in files for path in ([group] if isinstance(group, str) else group)
               if "://" not in path and not any(char in path for char in "*?[") and not Path(path).exists()]  # fmt: skip
    if missing:
        raise FileNotFoundError(
            f"`data_files` names files that do not exist: {missing[:3]}. Prepare the data first: a recipe's header "
            "names the command (e.g. `python -m hf_unlearn.examples.digits --output_dir outputs/digits-vit`)."
        )
    data = datasets.load_dataset(
        job.dataset_name, job.dataset_config, data_files=job.data_files, revision=job.dataset_revision
    )
    parts = {}
    for part, split, cap in (
        ("train", job.train_split, job.max_train_samples),
        ("eval", job.eval_split, job.max_eval_samples),
    ):
        if split not in data:
            raise ValueError(f"`{part}_split={split!r}` is not a split of '{job.dataset_name}': it has {list(data)}.")
        dataset = data[split]
        if job.label_column != "label":
            dataset = dataset.rename_column(job.label_column, "label")
        labelled = isinstance(dataset.features.get("label"), datasets.ClassLabel)
        if job.align_labels and labelled and model_label_names(model.config) is not None:
            dataset = align_labels(dataset, model.config)
        if cap is not None and cap < len(dataset):
            labels = dataset_labels(dataset, "label", f"{part}_split")
            dataset = dataset.select(subsample(np.arange(len(dataset)), cap, seed, labels))
        parts[part] = dataset
    return parts


def job_trainer(job: JobArguments, args, forget_classes):
    """An `UnlearningTrainer` for a job: its model (a classifier with its processor, or a generator with its judge)
    and its data, aligned to the model.
    `forget_classes="recorded"` takes the classes the model records as unlearned (`config.unlearned_classes`)."""
    from . import UnlearningTrainer
    from .kinds import load_model

    model, processor = load_model(job.model_name_or_path, trust_remote_code=args.trust_remote_code)
    if forget_classes == "recorded":
        forget_classes = getattr(model.config, "unlearned_classes", None)
        if not forget_classes:
            raise ValueError(
                f"`forget_classes` is required: '{job.model_name_or_path}' records no unlearned classes "
                "(`config.unlearned_classes`)."
            )
    data = load_job_data(job, model, args.seed)
    judge = None
    if job.judge_model:
        judge, judge_processor = load_model(job.judge_model, trust_remote_code=args.trust_remote_code)
        warning = judge_processor_warning(job.judge_model, judge_processor)
        if warning:
            logger.warning(warning)
    return UnlearningTrainer(
        model, args, train_dataset=data["train"], eval_dataset=data["eval"], processing_class=processor,
        forget_classes=forget_classes, judge=judge,
    )  # fmt: skip


def judge_processor_warning(judge_id: str, processor) -> str | None:
    """What to say when a judge comes with a processor that resizes or normalises its images: hf-unlearn gives a
    judge the generator's pixel tensors as they are, so such a judge sees inputs unlike those it was trained on."""
    does = [step for step, flag in (("resizes", "do_resize"), ("normalises", "do_normalize"))
            if getattr(processor, flag, False)]  # fmt: skip
    if not does:
        return None
    return (f"The judge '{judge_id}' comes with a {type(processor).__name__} that {' and '.join(does)} its images, "
            "but hf-unlearn gives the judge the generator's pixel tensors as they are (the training rows' shape and "
            "range): unless the judge was trained on such tensors, forget_share, retain_judge_accuracy and the Frechet "
            "distance mean nothing. Use a judge trained on the generator's own pixel tensors.")


BUILDERS = ("parquet", "csv", "json", "arrow", "text", "imagefolder", "audiofolder")


def card_dataset_name(job: JobArguments) -> str:
    """The dataset's name for the card: `card_dataset`, else a Hub ID, else (a builder over local files) the name of
    the folder that holds the training files, which says more than 'parquet'."""
    if job.card_dataset:
        return job.card_dataset
    if job.dataset_name in BUILDERS and job.data_files:
        files = job.data_files.get(job.train_split) if isinstance(job.data_files, dict) else job.data_files
        first = files[0] if isinstance(files, list) else files
        if isinstance(first, str):
            folder = Path(urlsplit(first).path if "://" in first else first).parent.name  # never a URL's credentials
            if folder:
                return folder
    from .outputs import public_reference

    return public_reference(job.dataset_name)


def unlearn_command(argv: list[str]):
    """`hf-unlearn unlearn`: returns the `UnlearningOutput`."""
    from .data import class_name
    from .outputs import check_replaceable, public_reference
    job, args = parse_job(argv)
    if not job.forget_classes:
        raise ValueError("`forget_classes` is required: set it in the job's YAML or pass --forget_classes.")
    output_dir = Path(args.output_dir)
    if output_dir.is_dir() and any(output_dir.iterdir()) and not job.overwrite_output_dir:
        raise ValueError(
            f"`output_dir` '{output_dir}' already holds files; choose another or pass --overwrite_output_dir true."
        )
    check_replaceable(output_dir, job.overwrite_output_dir)  # before the run, not after it
    trainer = job_trainer(job, args, job.forget_classes)
    result = trainer.unlearn()
    # The model, its processor, the card (README.md), the per-class plot and unlearning_results.json, written together
    # into a temporary folder that then replaces output_dir; with --push_to_hub, then one commit of that folder.
    # The job is recorded with Hub IDs and file names, not this machine's paths.
    card = {"dataset": card_dataset_name(job), "dataset_args": job.dataset_config, "dataset_split": job.train_split,
            "license": job.license, "finetuned_from": job.base_model,
            "extra": {"job": public_reference(asdict(job))}}  # fmt: skip
    if args.push_to_hub:
        trainer.push_to_hub(output_dir=str(output_dir), overwrite=job.overwrite_output_dir, **card)
    else:
        trainer.save_unlearned(str(output_dir), overwrite=job.overwrite_output_dir, **card)
    if trainer.is_world_process_zero():
        names = [class_name(trainer.model.config.id2label, c) for c in result.forget_classes or []]
        print(format_report(result.original_metrics, result.metrics, None, names))
        print(f"\n'{args.method}' took {result.metrics['unlearn_seconds']:.2f} s; saved with its card to {output_dir}")
    trainer.accelerator.end_training()
    return result


def evaluate_command(argv: list[str]) -> dict:
    """`hf-unlearn evaluate`: the unlearning metrics of a saved model (and of a reference, with the gaps)."""
    from .data import class_name
    from .kinds import load_model
    from .outputs import public_reference, write_atomic
    job, options, args = parse_job(argv, extra=(EvaluateArguments,), command="evaluate")
    trainer = job_trainer(job, args, job.forget_classes or "recorded")
    reference = None
    if options.reference_model:
        reference, _ = load_model(options.reference_model, trust_remote_code=args.trust_remote_code)
    metrics = trainer.evaluate_unlearning(reference_model=reference)
    if trainer.is_world_process_zero():
        names = [class_name(trainer.model.config.id2label, c) for c in trainer.split.forget_classes]
        measured = {key[len("reference_"):]: value for key, value in metrics.items() if key.startswith("reference_")}
        print(format_report(None, metrics, measured or None, names))
        if metrics.get("mean_gap") is not None:
            print(f"\nMean gap to the reference: {100 * metrics['mean_gap']:.2f} points")
        if options.results_file:
            record = {"job": public_reference(asdict(job)), "metrics": metrics}
            write_atomic(options.results_file, json.dumps(record, indent=1, default=str))
    trainer.accelerator.end_training()
    return metrics


def methods_command(argv: list[str]) -> list[str]:
    """`hf-unlearn methods`: one line per registered method, with its paper and its training defaults (the budget an
    `UnlearnConfig` gets for the fields you leave unset)."""
    from .methods import available_methods, get_method

    parser = argparse.ArgumentParser(prog="hf-unlearn methods", description="List the unlearning methods.")
    parser.parse_args(argv)
    lines = []
    for name in available_methods():
        spec = get_method(name)
        lines.append(f"{name:<16} {spec.description}" + (f"\n{'':<16} {spec.paper}" if spec.paper else ""))
        defaults = spec.method_class.training_defaults
        if defaults:
            lines.append(f"{'':<16} defaults: " + ", ".join(f"{key}={value}" for key, value in defaults.items()))
    print("\n".join(lines))
    return lines


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    usage = "usage: hf-unlearn COMMAND [options]\n\ncommands:\n" + "\n".join(
        f"  {name:<10} {description}" for name, description in COMMANDS.items()
    )
    if not argv or argv[0] in ("-h", "--help"):
        print(usage + "\n\n`hf-unlearn COMMAND --help` lists a command's options.")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"hf-unlearn: unknown command '{command}'. Available: {', '.join(COMMANDS)}.\n\n{usage}", file=sys.stderr)
        return 2
    # A bare `--debug` shows tracebacks; `--debug VALUE` is TrainingArguments' own option (and shows them too).
    debug = "--debug" in rest
    rest = [argument for i, argument in enumerate(rest)
            if argument != "--debug" or (i + 1 < len(rest) and not rest[i + 1].startswith("--"))]  # fmt: skip
    run = {"unlearn": unlearn_command, "evaluate": evaluate_command, "methods": methods_command}[command]
    try:
        outcome = run(rest)
    except (ValueError, TypeError, OSError, RuntimeError, ImportError, yaml.YAMLError) as error:
        # A mistake in the job (a bad argument, a missing file, a refused model): one line that names it and the fix.
        # The traceback is for bugs: `--debug` shows it.
        if debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"hf-unlearn {command}: error: {message} (run with --debug for the traceback)", file=sys.stderr)
        return 1
    check = getattr(outcome, "metrics", {}).get("forget_check") or {}  # `unlearn`: its run's verdict
    # failed, or nothing could show that it forgot (the original was already at the threshold): not a success
    return 1 if check.get("passed") is False or check.get("original_at_threshold") else 0
