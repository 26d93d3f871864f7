"""Model cards for unlearned models, and what `UnlearningTrainer.push_to_hub` uploads.

A card is rendered from a plain, JSON-serialisable *context* (`card_context`): what was forgotten (classes or rows,
dataset, split), the method with its paper, configuration and known limitations, every measured metric before and
after (and of a retrain reference when one was measured), the time. The same context is saved beside the model as
`unlearning_results.json`, so a card can be rendered again from it: `model_cards/` holds such examples and a test checks
they match the templates. Templates (Jinja, `hf_unlearn/templates/`): `image.md` and `audio.md` extend `base.md` with
their quick-start snippet.

```python
>>> result = trainer.unlearn()
>>> trainer.save_unlearned(dataset="google/speech_commands", dataset_args="v0.02")  # model, card, plot, results
>>> trainer.push_to_hub(dataset="google/speech_commands", dataset_args="v0.02")    # the same, then one commit
```
"""

from __future__ import annotations

import io
import json
import math
import re
import shlex
import sys
from dataclasses import asdict
from enum import Enum
from pathlib import Path

import huggingface_hub
import jinja2
import numpy as np
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from markupsafe import Markup
from transformers.utils.logging import get_logger

from .checks import measured_values
from .data import class_name
from .kinds import ModelKind, get_kind, kind_of
from .methods import available_methods, get_method
from .metric_registry import metrics_for
from .outputs import public_reference, write_atomic

logger = get_logger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
CARD_FILE, PLOT_FILE, RESULTS_FILE = "README.md", "per_class_accuracy.png", "unlearning_results.json"
TRAINING_FIELDS = (
    "learning_rate", "num_train_epochs", "max_steps", "optim", "optim_args", "weight_decay",
    "per_device_train_batch_size", "lr_scheduler_type", "warmup_steps", "max_grad_norm", "forget_accuracy_target",
    "max_forget_samples", "max_retain_samples", "seed",
)  # fmt: skip
def _hub_id(name: str | None) -> str | None:
    """`name` if it looks like a Hub ID (`org/name`, not an existing local path)."""
    if not name or name.count("/") != 1 or Path(name).exists() or name.startswith((".", "/")):
        return None
    return name


def card_context(trainer, result, *, model_id=None, dataset=None, dataset_config=None, dataset_split=None,
                 base_model=None, extra=None) -> dict:  # fmt: skip
    """Everything a card says about the run that produced `result` (an `UnlearningOutput` of `trainer`), as plain
    JSON-serialisable values. `dataset`, `dataset_config`, `dataset_split` default to the training dataset's info."""
    model, args, split = trainer.model, trainer.args, trainer.split
    spec = get_method(result.method)
    info = trainer.source_train_dataset.info
    id2label = model.config.id2label or {}
    names = [class_name(id2label, c) for c in (result.forget_classes or [])]
    kind = kind_of(model)
    peft = result.metrics.get("peft")
    metrics = {key: value for key, value in result.metrics.items() if key != "peft"}
    context = {
        "model_id": model_id or Path(args.output_dir).name,
        "base_model": base_model or _hub_id(getattr(model.config, "_name_or_path", None)),
        "modality": kind.card_template(model),
        "kind": kind.name,
        "pipeline_tag": kind.pipeline_tag(model),
        "model_class": type(model).__name__,
        "method": result.method,
        "description": spec.description,
        "paper": spec.paper,
        "citation": spec.citation,
        "limitations": spec.limitations,
        "method_config": _resolved(asdict(result.method_config), result.metrics),
        # The budget only when the run trained (gppu's fine-tuning may take no step; svd_projection never does).
        "training": {name: getattr(args, name) for name in TRAINING_FIELDS} if _trained(spec, result.metrics) else {},
        "stages": list(result.metrics.get("stages_run") or []),
        "preset": result.metrics.get("preset"),
        "inputs": _model_inputs(trainer),
        "peft": peft,
        "forget": {
            "class_level": split.is_class_level,
            "classes": names,
            "class_ids": list(result.forget_classes or []),
            "num_rows": result.num_forget_samples,
            "unlearned_before": [class_name(id2label, c) for c in split.unlearned_before],
        },
        "dataset": {
            "name": public_reference(dataset or info.dataset_name or info.builder_name),
            "config": dataset_config if dataset is not None else info.config_name,
            "split": dataset_split or str(trainer.source_train_dataset.split or "train"),
            "eval_split": str(getattr(trainer.eval_dataset, "split", None) or "eval"),
        },
        "metrics": metrics,
        "original_metrics": result.original_metrics or {},
        "unlearn_seconds": result.metrics.get("unlearn_seconds"),
        "num_processes": trainer.accelerator.num_processes,
        "plot": None,
        **(extra or {}),
    }
    # JSON-native values (enums as their value, tuples as lists): the card rendered now and one rendered later from
    # unlearning_results.json are the same.
    return json.loads(json.dumps(context, default=_plain))


def _trained(spec, metrics: dict) -> bool:
    return spec.method_class.uses_training_budget or bool(metrics.get("finetune_steps"))


def _model_inputs(trainer) -> dict:
    """What the quick start needs: whether a processor is saved with the model, else the model input's name and the
    shape of one row (from the training data)."""
    name = getattr(trainer.model, "main_input_name", None)
    dataset = trainer.source_train_dataset
    shape = None
    if name in (dataset.column_names or []) and len(dataset):
        shape = list(np.shape(dataset.with_format(None)[0][name]))
    return {"processor": trainer.processing_class is not None, "name": name, "shape": shape}


def _resolved(method_config: dict, metrics: dict) -> dict:
    """`method_config` with each setting left to the method's default (None) shown as the run resolved it (the
    method reports those values, e.g. remain_geometry's `alpha`), so the card states what actually ran."""
    return {name: metrics.get(name, value) if value is None else value for name, value in method_config.items()}


def _plain(value):
    return value.value if isinstance(value, Enum) else str(value)


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _number(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _kind(context: dict) -> ModelKind:
    return get_kind(context.get("kind", "classifier"))  # contexts saved before GANs were supported are classifiers


def _has_reference(context: dict) -> bool:
    """Whether a retrain reference was measured for the run (`evaluate_unlearning(reference_model=...)`)."""
    return any(key.startswith("reference_") for key in context["metrics"])


def _report_rows(context: dict) -> list[dict]:
    metrics, original = context["metrics"], context["original_metrics"]
    rows = []
    for metric in metrics_for(_kind(context).name):
        key = metric.key
        if metrics.get(key) is None and original.get(key) is None:
            continue
        show = _percent if metric.percent else _number
        rows.append({"label": metric.label, "original": show(original.get(key)), "unlearned": show(metrics.get(key)),
                     "reference": show(metrics.get(f"reference_{key}")), "good": metric.good})  # fmt: skip
    return rows


def _per_class_rows(context: dict) -> list[dict]:
    key = _kind(context).per_class[0]
    after = context["metrics"].get(key) or {}
    before = context["original_metrics"].get(key) or {}
    forgotten = set(context["forget"]["classes"]) | set(context["forget"]["unlearned_before"])
    return [{"name": name, "original": _percent(before.get(name)), "unlearned": _percent(value),
             "forgotten": name in forgotten} for name, value in after.items()]  # fmt: skip


def card_data(context: dict):
    """`huggingface_hub.ModelCardData` with the measured results in `model-index`; forget and retain results carry
    distinct dataset splits (results with the same task, dataset and split would be merged into one)."""
    dataset, metrics = context["dataset"], context["metrics"]
    dataset_id = dataset["name"] or "custom"
    # YAML quotes these strings; names from data are kept on one line all the same.
    what = " ".join(", ".join(context["forget"]["classes"]).split()) or f"{context['forget']['num_rows']} training rows"
    results = []
    for metric in metrics_for(_kind(context).name):
        if metric.model_index is None or metrics.get(metric.key) is None:
            continue
        (part, metric_type), label, key = metric.model_index, metric.label, metric.key
        split = part if part.startswith("train") else f"{dataset['eval_split']}-{part}"
        results.append(
            EvalResult(
                task_type=context["pipeline_tag"],
                dataset_type=dataset_id,
                dataset_name=f"{dataset_id} ({part}: {what})"
                if "forget" in part
                else f"{dataset_id} ({'retained classes' if context['forget']['class_level'] else 'every row'})",
                dataset_config=dataset["config"],
                dataset_split=split,
                metric_type=metric_type,
                metric_name=label,
                metric_value=round(metrics[key], 4),
            )  # fmt: skip
        )
    extras = context.get("card") or {}
    return ModelCardData(
        base_model=context["base_model"],
        language=extras.get("language"),
        license=extras.get("license"),
        library_name=_kind(context).library_name,
        pipeline_tag=context["pipeline_tag"],
        tags=["hf-unlearn", "machine-unlearning", context["method"], *(extras.get("tags") or [])],
        datasets=[dataset["name"]] if _hub_id(dataset["name"]) else None,
        model_name=context["model_id"],
        eval_results=results or None,
    )


def render_card(context: dict):
    """The `huggingface_hub.ModelCard` of a run, rendered from `context` alone (deterministic)."""
    # Every `{{ value }}` is escaped for Markdown (`finalize`) unless it is Markup built here (YAML, JSON blocks).
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)), keep_trailing_newline=True, trim_blocks=True,
        lstrip_blocks=True, undefined=jinja2.StrictUndefined, finalize=escape_markdown,
    )  # fmt: skip
    environment.filters.update(python_string=_python_string, hub_id=_hub_id_part, link=_link, code=_code,
                               python_identifier=_python_identifier)  # fmt: skip
    # Contexts saved by earlier versions lack some keys: their cards render as before.
    context = {"stages": [], "inputs": {"processor": True, "name": None, "shape": None}, **context}
    check = context.get("metrics", {}).get("forget_check") or {}
    measured = measured_values(check)
    limits = f"forget accuracy at most {_percent(check.get('threshold'))}"
    if check.get("max_retain_drop") is not None:
        limits += f", retain accuracy drop at most {_percent(check['max_retain_drop'])}"
    forget_check = {
        "passed": check.get("passed"),
        "summary": ", ".join(f"{key.replace('_', ' ')} {_percent(value)}" for key, value in measured.items()),
        "limits": limits,
        "original_at_threshold": bool(check.get("original_at_threshold")),
    }
    not_measured = (
        not _kind(context).generator and context["forget"]["class_level"]
        and "forget_accuracy" in context["metrics"] and context["metrics"]["forget_accuracy"] is None
    )  # fmt: skip
    # The method's own texts (registry, in this package) keep their Markdown when the context holds them unchanged.
    spec = get_method(context["method"]) if context["method"] in available_methods() else None
    own_texts = {key: Markup(context[key]) for key in ("description", "limitations", "citation")
                 if spec is not None and context.get(key) and context[key] == getattr(spec, key)}  # fmt: skip
    text = environment.get_template(f"{context['modality']}.md").render(
        **{**context, **own_texts},
        forget_check=forget_check,
        forget_not_measured=not_measured,
        card_data=Markup(card_data(context).to_yaml()),
        report=_report_rows(context),
        per_class_value=_kind(context).per_class[1],
        per_class=_per_class_rows(context),
        has_reference=_has_reference(context),
        method_config_json=Markup(json.dumps(context["method_config"], indent=1)),
        training_json=Markup(json.dumps({k: v for k, v in context["training"].items() if v is not None}, indent=1)),
    )
    return ModelCard(text)


# Markdown and HTML that a value from data (a label name, a dataset name, a results file) could inject into a card.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|#!$~&{}])")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def escape_markdown(value) -> Markup:
    """`value` as literal text in a Markdown card: one line, every Markdown / HTML special character escaped (so a
    label `<script>`, a `|` in a table cell or a `## heading` after a newline stay text). Markup passes as it is."""
    if isinstance(value, Markup):
        return value
    text = " ".join(str(value).split()) if isinstance(value, str) else str(value)
    return Markup(_MARKDOWN_SPECIAL.sub(r"\\\1", text))


def _python_string(value) -> Markup:
    """`value` as a Python string literal in a code block (quotes and backslashes escaped, one line)."""
    return Markup(json.dumps(" ".join(str(value).split())))


def _python_identifier(value) -> Markup:
    """A model input's name as Python code (it must be an identifier: anything else cannot come from a model)."""
    if not (isinstance(value, str) and value.isidentifier()):
        raise ValueError(f"{value!r} is not a Python identifier: it cannot name a model input in the quick start.")
    return Markup(value)


def _code(value) -> Markup:
    """`value` as an inline code span (literal there; backticks, which would end the span, become quotes)."""
    return Markup("`" + " ".join(str(value).split()).replace("`", "'") + "`")


def _hub_id_part(value) -> Markup:
    """A Hub ID as the path of a link, or an escaped text when it is not one."""
    return Markup(value) if isinstance(value, str) and _HUB_ID.fullmatch(value) else escape_markdown(value)


def _link(value) -> Markup:
    """An https URL as an autolink; anything else as escaped text."""
    if isinstance(value, str) and re.fullmatch(r"https://[^\s<>\\`]+", value):
        return Markup(f"<{value}>")
    return escape_markdown(value)


def plot_per_class(context: dict, path: str | Path) -> bool:
    """A bar chart of per-class accuracy before and after (PNG at `path`); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("No per-class plot in the card: it needs matplotlib (pip install 'hf-unlearn[plot]').")
        return False
    try:
        # Names are data: drawn as plain text (a `$` in a label would otherwise start matplotlib's math mode).
        with matplotlib.rc_context({"text.parse_math": False}):
            _draw_per_class(plt, context, Path(path))
    except Exception as error:  # a plot must never cost the card
        logger.warning(f"The per-class plot could not be drawn ({type(error).__name__}: {error}); the card has none.")
        return False
    return True


def _draw_per_class(plt, context: dict, path: Path) -> None:
    key, value_name, title = _kind(context).per_class
    after = context["metrics"].get(key) or {}
    before = context["original_metrics"].get(key) or {}
    names = list(after)
    forgotten = set(context["forget"]["classes"]) | set(context["forget"]["unlearned_before"])
    positions = range(len(names))
    figure, axes = plt.subplots(figsize=(max(6.0, 0.55 * len(names)), 3.2))
    width = 0.4
    if before:  # a class the original was not measured on gets no bar, not a bar at 0
        axes.bar([p - width / 2 for p in positions], [100 * before.get(n, math.nan) for n in names], width,
                 label="original", color="#9aa5b1")  # fmt: skip
    axes.bar([p + width / 2 for p in positions], [100 * after[n] for n in names], width, label="unlearned",
             color=["#d1495b" if n in forgotten else "#2e86ab" for n in names])  # fmt: skip
    axes.set_xticks(
        list(positions), names, rotation=45 if len(names) > 12 else 0, ha="right" if len(names) > 12 else "center"
    )
    for label in axes.get_xticklabels():
        if label.get_text() in forgotten:  # a forgotten class's bar may have no height: mark its name
            label.set_color("#d1495b")
            label.set_fontweight("bold")
    axes.set_ylabel(f"{value_name} (%)")
    axes.set_ylim(0, 105 if key == "per_class_accuracy" else 100 * max([*before.values(), *after.values(), 0.2]) + 5)
    axes.set_title(f"{context['model_id']}: {title} (red: forgotten)")
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    image = io.BytesIO()
    try:
        figure.savefig(image, format="png", dpi=100, metadata={"Software": None})
    finally:
        plt.close(figure)
    write_atomic(path, image.getvalue())


def write_card_files(output_dir: str | Path, context: dict) -> list[str]:
    """`README.md` (the card), `per_class_accuracy.png` (when matplotlib is installed) and `unlearning_results.json`
    (the context) in `output_dir`, each written whole; returns the file names."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    context = {**context, "plot": PLOT_FILE if plot_per_class(context, output_dir / PLOT_FILE) else None}
    write_atomic(output_dir / RESULTS_FILE, json.dumps(context, indent=1, default=str) + "\n")
    write_atomic(output_dir / CARD_FILE, render_card(context).content)
    return [CARD_FILE, RESULTS_FILE] + ([PLOT_FILE] if context["plot"] else [])


def regenerate(folder: str | Path) -> list[Path]:
    """Render again every card under `folder` from the `unlearning_results.json` beside it (after a template change):
    `python -m hf_unlearn.hub model_cards`. Returns the cards written. Files are written only inside each card's own
    folder, under their fixed names (a results file's `plot` value is not a path anyone can choose)."""
    written, root = [], Path(folder).resolve()
    for results in sorted(Path(folder).glob(f"*/{RESULTS_FILE}")):
        if results.parent.is_symlink() or results.is_symlink() or results.resolve().parent.parent != root:
            logger.warning(f"Skipping {results}: a link out of '{folder}'.")
            continue
        context = json.loads(results.read_text())
        if context.get("plot"):
            context["plot"] = PLOT_FILE if plot_per_class(context, results.parent / PLOT_FILE) else None
        write_atomic(results.parent / CARD_FILE, render_card(context).content)
        written.append(results.parent / CARD_FILE)
    return written


#: What a push leaves out of the output folder: the Trainer's checkpoints and logs, private files.
UPLOAD_IGNORED = ("_*", "checkpoint-*/*", "runs/*")


def push_folder(folder: Path, target: str, *, token: str, private: bool | None = None, revision: str | None = None,
                commit_message: str | None = None, blocking: bool = True, on_resolved=None):  # fmt: skip
    """Upload `folder` to the model repository `target` in one commit, creating the repository in the same step
    (a bare name goes under the token's account; `on_resolved(repo_id)` is called with the full ID first). Returns
    `(repo_id, commit_info)` (a future with `blocking=False`).

    Any failure raises a `RuntimeError` that says at which step, the cause, what is local, what reached the Hub and
    the command that retries. A repository this call created is deleted again when its commit failed and it holds no
    file; one that holds files (a commit whose answer was lost) is kept."""
    api = huggingface_hub.HfApi(token=token)
    repo_id, created, step = target, False, "resolving the account"
    try:
        if "/" not in repo_id:
            repo_id = f"{api.whoami()['name']}/{repo_id}"
            if on_resolved is not None:
                on_resolved(repo_id)
        step = "creating the repository"
        try:
            api.create_repo(repo_id, private=private, exist_ok=False)
            created = True
        except huggingface_hub.errors.HfHubHTTPError as error:
            if getattr(error.response, "status_code", None) != 409:  # 409: it exists, which is fine
                raise
        step = "uploading"
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, revision=revision,
            ignore_patterns=list(UPLOAD_IGNORED), run_as_future=not blocking,
        )  # fmt: skip
        return repo_id, commit
    except Exception as error:  # any failure of the network or the server: say where things are
        raise RuntimeError(_push_failure(api, repo_id, created, step, error, folder, private, revision)) from error


def _push_failure(api, repo_id: str, created: bool, step: str, error: Exception, folder: Path,
                  private: bool | None = None, revision: str | None = None) -> str:  # fmt: skip
    """What a failed push says: the cause, what is local, what reached the Hub, how to retry (the retry command keeps
    the push's `private` and `revision`: `hf upload` alone creates a public repository and uploads to main)."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    cause = f"HTTP {status}: {getattr(error, 'server_message', None) or error}" if status else f"{type(error).__name__}: {error}"
    reached = "Nothing reached the Hub."
    if created:
        try:
            # The commit may have landed with only its answer lost: a repository with files is never deleted.
            landed = bool(api.model_info(repo_id).siblings)
        except Exception:  # the connection may be gone: then nothing is deleted blindly
            landed = None
        if landed is None:
            reached = (
                f"The repository '{repo_id}' was created; whether the commit landed could not be checked, so it was "
                "left as it is: look at it on the Hub before you retry."
            )
        elif landed:
            reached = f"The upload seems to have reached '{repo_id}' all the same (it holds files): check it on the Hub."
        else:
            try:
                api.delete_repo(repo_id)
                reached = f"The repository '{repo_id}' this push had created was deleted again, so no empty repository is left."
            except Exception as cleanup_error:  # say so, do not hide the first error
                reached = (
                    f"The repository '{repo_id}' was created but holds no commit, and deleting it failed "
                    f"({type(cleanup_error).__name__}): delete it on the Hub if you do not retry."
                )
    elif step == "uploading":
        reached = (f"The repository '{repo_id}' existed before; the upload is one commit, so it was not changed "
                   "unless that commit landed and only its answer was lost: check it on the Hub.")
    options = [f"--exclude {shlex.quote(pattern)}" for pattern in UPLOAD_IGNORED]
    options += ["--private"] if private else []
    options += [f"--revision {shlex.quote(revision)}"] if revision else []
    return (
        f"Pushing to '{repo_id}' failed while {step} ({' '.join(cause.split())}). {reached} Everything is saved locally "
        f"in {folder}: the unlearned model, its card (README.md), the plot and unlearning_results.json. Fix the cause "
        f"and push again with `trainer.push_to_hub()`, or upload that folder with `hf upload {shlex.quote(repo_id)} "
        f"{shlex.quote(str(folder))} {' '.join(options)}`."
    )


if __name__ == "__main__":
    for card in regenerate(sys.argv[1] if len(sys.argv) > 1 else "model_cards"):
        print(card)
