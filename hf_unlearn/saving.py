"""Saving and publishing an unlearning run: the model (or its peft adapter), its processor, the card, the per-class
plot and `unlearning_results.json`, written atomically and pushed to the Hub in one commit. `UnlearningTrainer` takes
these methods from `SavingMixin`, in place of the Trainer's own."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import torch

from .hub import card_context, push_folder, write_card_files
from .lora import has_lora, save_adapter
from .outputs import check_finite, check_replaceable, prepare_staging, resolved_output, staging_path, swap_in


class SavingMixin:
    """`create_model_card`, `save_unlearned`, `save_model`, `push_to_hub` of `UnlearningTrainer` (mixed in before
    `transformers.Trainer`, whose own `save_model` writes the weights)."""

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        dataset_split: str | None = None,
        extra: dict | None = None,
        output_dir: str | None = None,
    ) -> list[str]:
        """Write the unlearning card of the last `unlearn()` into `output_dir` (default `args.output_dir`): `README.md`
        (what was forgotten, the method, every measured metric in the text and in `model-index`, the forget check,
        limitations, citation), the per-class plot `per_class_accuracy.png` (with matplotlib) and
        `unlearning_results.json`, each file written whole. `dataset` / `dataset_args` / `dataset_split` name the
        training data (default: the dataset's own info), `finetuned_from` the base model. Returns the file names (none
        on processes other than the main one). `save_unlearned` writes them together with the model."""
        if self.unlearning_output is None:
            raise ValueError("`create_model_card` describes an unlearning run: call `trainer.unlearn()` first.")
        if not self.is_world_process_zero():
            return []
        name = model_name or self.args.hub_model_id or Path(self.args.output_dir).name
        card = {"language": language, "license": license, "tags": [tags] if isinstance(tags, str) else tags}
        context = card_context(
            self, self.unlearning_output, model_id=name, base_model=finetuned_from, dataset=_first(dataset),
            dataset_config=_first(dataset_args), dataset_split=dataset_split,
            extra={**(extra or {}), "card": {key: value for key, value in card.items() if value}},
        )  # fmt: skip
        return write_card_files(output_dir or self.args.output_dir, context)

    def save_unlearned(self, output_dir: str | None = None, overwrite: bool = False, **card_arguments) -> Path:
        """Save everything of the run at once: the model (or its peft adapter), its processor, and after `unlearn()`
        the card, plot and `unlearning_results.json` (`card_arguments` go to `create_model_card`).

        Atomic: everything is written into a temporary folder beside `output_dir` (default `args.output_dir`), which
        then replaces `output_dir` whole, so a killed run leaves the old folder or the new one, never a mix, and no
        file of an earlier save (an old adapter, an old card) survives. A folder that holds something other than a
        saved model, or the folder the original model was loaded from, is refused unless `overwrite`. Non-finite weights
        are never saved. Returns the folder."""
        target = resolved_output(output_dir or self.args.output_dir)
        source = getattr(self.model.config, "_name_or_path", None) or ""
        if not overwrite and source and Path(source).expanduser().is_dir() and resolved_output(source) == target:
            raise ValueError(
                f"`output_dir` '{target}' is the folder the original model was loaded from: saving would replace the "
                "model before unlearning. Save to a new folder, e.g. `output_dir='outputs/model-unlearned'` (or pass "
                "`overwrite=True` to replace the original on purpose)."
            )
        self._raise_on_every_process(check_replaceable, target, overwrite)
        self._raise_on_every_process(check_finite, self.model, "Saving")
        staging = staging_path(target)
        self._raise_on_every_process(prepare_staging, target, main_only=True)
        self._write_model(str(staging))

        # the card names the folder written, not `args.output_dir`'s (unless a Hub ID or name is given)
        card_arguments.setdefault("model_name", self.args.hub_model_id or target.name)

        def finish():
            if self.unlearning_output is not None:
                self.create_model_card(output_dir=str(staging), **card_arguments)
            # This run's own logs and checkpoints move across; those of earlier runs go (and with `overwrite`, all).
            swap_in(staging, target, None if overwrite else self._started_at)

        self._raise_on_every_process(finish, main_only=True)
        return target

    def _write_model(self, output_dir: str) -> None:
        """The model into `output_dir`: a peft adapter with its processor when it kept LoRA adapters (the main process
        writes), else the Trainer's save (the main process writes; with DeepSpeed or FSDP every process takes part).
        A write failing on one process stops every process, none left waiting for it."""
        if has_lora(self.model):
            self._raise_on_every_process(self._save_adapter, output_dir, main_only=True)
        else:
            self._raise_on_every_process(super().save_model, output_dir, True)

    def _save_adapter(self, output_dir: str) -> None:
        save_adapter(self.model, output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def _raise_on_every_process(self, work, *args, main_only: bool = False):
        """Run `work(*args)` (on the main process only with `main_only`) and make every process raise when any
        process failed, instead of leaving the others waiting at the next barrier."""
        error = None
        if not main_only or self.is_world_process_zero():
            try:
                work(*args)
            except Exception as raised:  # re-raised below, on this process and (as a RuntimeError) on the others
                error = raised
        if self.accelerator.num_processes > 1:
            failed = torch.tensor([float(error is not None)], device=self.args.device)
            if self.accelerator.reduce(failed, reduction="sum").item() and error is None:
                raise RuntimeError("Another process failed (its error is in its log); this one stops too.")
        if error is not None:
            raise error

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """As `Trainer.save_model`, written atomically with the card and results (`save_unlearned`); with
        `args.push_to_hub`, one push of all of it (`push_to_hub`). A model that kept its LoRA adapters
        (`peft_merge=False`) is saved as a peft adapter with its processor."""
        if _internal_call:  # the Trainer's own checkpoints: never one with non-finite weights (the run stops there)
            self._raise_on_every_process(check_finite, self.model, "Checkpoint")
            self._write_model(output_dir or self.args.output_dir)
            return None
        if self.args.push_to_hub:
            return self.push_to_hub(output_dir=output_dir)
        self.save_unlearned(output_dir)
        return None

    def _save_checkpoint(self, model, trial):
        """The Trainer's checkpoint (the model, the optimizer and scheduler states, the RNG states), timed apart
        from the method (`checkpoint_seconds`)."""
        with self.beside_method("checkpoints"):
            return super()._save_checkpoint(model, trial)

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """No repository is created up front (the Trainer would create an empty one at start-up): `push_to_hub`
        creates it in the same step as its one commit."""

    def push_to_hub(self, commit_message: str | None = "Unlearned with hf-unlearn", blocking: bool = True,
                    token: str | None = None, revision: str | None = None, output_dir: str | None = None,
                    overwrite: bool = False, **card_arguments):  # fmt: skip
        """Save the unlearned model, its processor, the card, the plot and `unlearning_results.json` to `output_dir`
        (`save_unlearned`: everything is local before the Hub is contacted), then create the repository
        `args.hub_model_id` (default: the output folder's name under your account; `hub_private_repo`, `hub_token`
        and `hub_revision` as in `TrainingArguments`) and upload the folder in one commit. `card_arguments` go to
        `create_model_card`, `overwrite` to `save_unlearned`. The original model's repository is never the target.

        A failure (no token, a refused repository, no connection, a server error) raises an error that says what is
        saved locally, what reached the Hub (a repository this call created is deleted again when its commit fails
        and it holds no file) and the command that retries the upload. With `blocking=False` the upload runs in the
        background: its failure is raised by the returned future, without that clean-up."""
        original = getattr(self.model.config, "_name_or_path", None) or ""
        target = self.args.hub_model_id or Path(self.args.output_dir).absolute().name
        if target == original or ("/" not in target and original.endswith("/" + target)):
            raise ValueError(
                f"`hub_model_id` '{target}' would write into the original model's repository '{original}': push the "
                "unlearned model to a new one, e.g. `UnlearnConfig(hub_model_id='your-name/model-unlearned')`."
            )
        token = token if token is not None else (self.args.hub_token or huggingface_hub.get_token())
        card_arguments.setdefault("model_name", target)
        folder = self.save_unlearned(output_dir, overwrite, **card_arguments).absolute()
        if not token:
            raise ValueError(
                f"Pushing '{target}' needs a Hugging Face token with write access: run `hf auth login`, set HF_TOKEN, "
                f"or pass `token=` / `hub_token`. The unlearned model and its card are saved in {folder}."
            )
        if not self.is_world_process_zero():
            return None

        def name_in_card(repo_id: str) -> None:  # a bare name resolved to the account: the quick start names the full ID
            if self.unlearning_output is not None:
                self.create_model_card(output_dir=str(folder), **{**card_arguments, "model_name": repo_id})

        self.hub_model_id, commit = push_folder(
            folder, target, token=token, private=self.args.hub_private_repo, revision=revision or self.args.hub_revision,
            commit_message=commit_message, blocking=blocking, on_resolved=name_in_card,
        )  # fmt: skip
        return commit


def _first(value):
    return value[0] if isinstance(value, list | tuple) else value
