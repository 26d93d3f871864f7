"""`gan_cascade`: item and class unlearning for GANs by cascaded discriminator and generator updates.

Source: Hui Sun, Tianqing Zhu, Wenhan Chang, Wanlei Zhou: "Generative Adversarial Networks Unlearning", arXiv
2308.09881 (IEEE TDSC 2025). Only the abstract is public (no full text, no code): a fake label for the unlearning
samples, a substitution mechanism, and unlearning and learning run in cascade; item and class unlearning; 185x (MNIST)
faster than retraining. What is built here follows that abstract; the steps marked [R] are our
reconstruction, grounded in Kong & Chaudhuri, "Data Redaction from Pre-trained GANs" (SaTML 2023), which treats
removed samples as extra fakes for the discriminator:

1. [R] Fake label: the discriminator's target for an unlearning sample is "fake": 0 (`fake_label="zero"`), or the
   discriminator's current mean probability on generated samples (`fake_label="generated"`).
2. [R] Substitution: in every learning step, the share of the real batch that the removed samples would have had
   (their share of the training set) is filled with substitutes from the retained data: for item unlearning a
   retained row of the same class, for class unlearning a retained row of another class. A class-conditional
   discriminator sees the substitute under the removed sample's label, so the generator's forgotten class maps onto
   retained images instead of leaving a hole in its latent space.
3. Cascade, per iteration: (a) discriminator unlearning step on a batch of unlearning samples with the fake label;
   (b) [R] discriminator learning step: retained rows and substitutes as real, generated images as fake; (c) generator
   step with the non-saturating loss against the updated discriminator (a conditional generator is asked for every
   class, forgotten ones included).
4. [R] Stopping, checked every `check_every` iterations: items, when the discriminator scores the unlearning samples
   no higher than generated ones (it takes them for fakes); classes, when the judge classifier (the trainer's `judge`)
   assigns at most `forget_share_target` of the generated samples (conditional: of those generated for the forgotten
   classes) to a forgotten class. `max_iterations` caps the run either way.

Example:

```python
>>> from hf_unlearn import UnlearnConfig, UnlearningTrainer
>>> from hf_unlearn.gan import GANPair
>>> args = UnlearnConfig(output_dir="gan-without-three", method="gan_cascade")
>>> trainer = UnlearningTrainer(GANPair.from_pretrained("digits-gan"), args, train_dataset=data["train"],
...                             eval_dataset=data["test"], judge=digits_classifier_model, forget_classes=["three"])
>>> trainer.unlearn().metrics["forget_share"]  # doctest: +SKIP
```
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from accelerate.utils import broadcast
from tqdm.auto import tqdm

from ..contract import UnlearningMethod
from ..gan import (
    GANPair,
    Players,
    discriminator_loss,
    discriminator_probabilities,
    gan_optimizers,
    generator_loss,
    random_labels,
)
from ..generative import cycled, image_tensors, judge_outputs
from ..precision import autocast_undone_after
from ..registry import register_method

logger = get_logger(__name__)

FAKE_LABELS = ("zero", "generated")
ITEM_STOPS = ("substitutes", "generated")


@dataclass
class GANCascadeConfig:
    """Hyperparameters of `gan_cascade`. The paper's values are not public; these defaults were chosen on the digits
    benchmark (`benchmarks/gan_cascade.py`)."""

    max_iterations: int = field(
        default=400, metadata={"help": "Most cascade iterations (each: D unlearning, D learning, G step)."}
    )
    batch_size: int = field(default=64, metadata={"help": "Rows per learning batch (real and generated)."})
    learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Adam learning rate of both networks (betas 0.5, 0.999, as DCGAN). None: 2e-3 for classes, 5e-4 "
            "for items (chosen on the digits GAN, trained with 2e-4: a fresh Adam state moves every weight by about "
            "the rate in its first steps, which items, a small change, do not need; 2e-3 on items raised the Frechet "
            "distance by 80 %)."
        },
    )
    fake_label: str = field(
        default="zero",
        metadata={
            "help": "Discriminator target for unlearning samples: 'zero' (fake), or 'generated' (its current mean "
            "probability on generated samples)."
        },
    )
    unlearn_weight: float = field(
        default=1.0, metadata={"help": "Weight of the discriminator's loss on the unlearning samples."}
    )
    check_every: int | None = field(
        default=None,
        metadata={
            "help": "Iterations between two checks of the stopping rule. None: 5 for classes (a check generates and "
            "judges `check_samples` images), 1 for items (a check is one discriminator pass over their rows)."
        },
    )
    check_samples: int = field(
        default=500, metadata={"help": "Generated samples the judge (class) or the discriminator (items) scores."}
    )
    item_stop: str = field(
        default="substitutes",
        metadata={
            "help": "Item unlearning stops when the discriminator scores the unlearning samples no higher than "
            "'substitutes' (the retained rows of their classes: they look like data it never saw), or than "
            "'generated' samples (they look fake; stronger, and on digits it overshoots, see the module docstring)."
        },
    )
    forget_share_target: float = field(
        default=0.01,
        metadata={"help": "Class unlearning stops once the judge finds at most this share of forgotten classes."},
    )

    def __post_init__(self):
        if self.item_stop not in ITEM_STOPS:
            raise ValueError(f"`item_stop` must be one of {ITEM_STOPS}; got {self.item_stop!r}.")
        if self.fake_label not in FAKE_LABELS:
            raise ValueError(f"`fake_label` must be one of {FAKE_LABELS}; got {self.fake_label!r}.")
        for name in ("max_iterations", "batch_size", "check_every", "check_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be at least 1; got {getattr(self, name)}.")
        if not 0 <= self.forget_share_target < 1:
            raise ValueError(f"`forget_share_target` must be in [0, 1); got {self.forget_share_target}.")


class GANCascade(UnlearningMethod):
    model_kinds = ("gan",)
    supports_peft = False
    supports_sharding = False
    stops_at_forget_target = False

    def run(self) -> None:
        # accelerate's `prepare` wraps each network's forward in autocast with bf16 / fp16: undone after the run, or
        # the unlearned GAN would be measured (and returned) in half precision while its original was not
        pair = self.trainer.model
        with contextlib.ExitStack() as stack:
            for network in (pair.generator, pair.discriminator) if isinstance(pair, GANPair) else ():
                stack.enter_context(autocast_undone_after(network))
            self.cascade()

    def cascade(self) -> None:
        trainer, config = self.trainer, self.config
        pair = trainer.model
        if not isinstance(pair, GANPair):
            raise TypeError(
                f"Method 'gan_cascade' unlearns a GAN (`hf_unlearn.gan.GANPair`); `model` is a {type(pair).__name__}. "
                "For classifiers choose another method (`hf-unlearn methods`)."
            )
        self.class_level = trainer.split.is_class_level
        if self.class_level and trainer.judge is None:
            raise ValueError(
                "Class unlearning with 'gan_cascade' stops when a judge classifier finds the class gone: pass "
                "`judge=` (an image classifier of the same data) to UnlearningTrainer."
            )
        device = trainer.args.device
        forget_images, forget_labels = (
            t.to(device) for t in image_tensors(trainer.forget_view, label_column=trainer.label_column)
        )
        retain_images, retain_labels = (
            t.to(device) for t in image_tensors(trainer.retain_view, label_column=trainer.label_column)
        )
        self.forget_rows = (forget_images, forget_labels)
        self.substitutes = substitute_pools(forget_labels, retain_labels, self.class_level)
        # Item stopping compares the unlearning samples with every retained row that may stand in for them.
        candidates = self.substitutes.candidates.to(device)
        self.substitute_rows = (retain_images[candidates], retain_labels[candidates])
        learning_rate = (
            config.learning_rate if config.learning_rate is not None else (2e-3 if self.class_level else 5e-4)
        )
        check_every = config.check_every if config.check_every is not None else (5 if self.class_level else 1)
        self.report.update({"learning_rate": learning_rate, "check_every": check_every})
        optimizer_d, optimizer_g = gan_optimizers(pair, learning_rate)
        accelerator = trainer.accelerator
        generator, discriminator, optimizer_d, optimizer_g = accelerator.prepare(
            pair.generator, pair.discriminator, optimizer_d, optimizer_g
        )
        players = Players(generator, discriminator, pair.config.conditional, pair.config.latent_dim)
        if accelerator.num_processes > 1:  # `unlearn` seeded every process alike: each draws its own rows and noise
            torch.manual_seed(trainer.args.seed + accelerator.process_index)
        all_classes = torch.arange(trainer.num_labels, device=device)
        batch = config.batch_size
        # The removed samples' share of a training batch, which substitutes fill (at least one per batch).
        substitute_count = max(1, round(batch * len(forget_images) / (len(forget_images) + len(retain_images))))
        forget_batch = min(batch, len(forget_images))
        pair.train()
        self.report.update({"iterations": 0, "stopped_by": "max_iterations"})
        progress = tqdm(range(config.max_iterations), desc="GAN cascade unlearning",
                        disable=not trainer.is_local_process_zero() or trainer.args.disable_tqdm)  # fmt: skip
        for iteration in progress:
            # (a) discriminator unlearning step: the unlearning samples get the fake label, their substitutes (under
            # the samples' labels) stay real, so that D learns to reject these samples rather than their classes.
            removed = torch.randint(len(forget_images), (forget_batch,), device=device)
            labels = forget_labels[removed] if players.conditional else None
            images = torch.cat([forget_images[removed], retain_images[self.substitutes.draw(removed)]])
            logits = players.discriminate(images, None if labels is None else torch.cat([labels, labels]))
            target = self.fake_target(players, forget_batch, all_classes)
            targets = torch.cat([torch.full((forget_batch,), target), torch.ones(forget_batch)]).to(logits)
            optimizer_d.zero_grad(set_to_none=True)
            accelerator.backward(config.unlearn_weight * F.binary_cross_entropy_with_logits(logits, targets))
            optimizer_d.step()
            # (b) discriminator learning step: retained rows and substitutes real, generated images fake.
            real_rows = torch.randint(len(retain_images), (batch - substitute_count,), device=device)
            removed = torch.randint(len(forget_images), (substitute_count,), device=device)
            substitutes = self.substitutes.draw(removed)
            real = torch.cat([retain_images[real_rows], retain_images[substitutes]])
            real_labels = torch.cat([retain_labels[real_rows], forget_labels[removed]])  # substitutes keep the label
            fake_labels = random_labels(players, batch, all_classes)
            with torch.no_grad():
                fake = players.generate(players.noise(batch), fake_labels)
            optimizer_d.zero_grad(set_to_none=True)
            accelerator.backward(
                discriminator_loss(players, real, real_labels if players.conditional else None, fake, fake_labels)
            )
            optimizer_d.step()
            # (c) generator step against the updated discriminator.
            optimizer_g.zero_grad(set_to_none=True)
            accelerator.backward(generator_loss(players, batch, random_labels(players, batch, all_classes)))
            optimizer_g.step()
            self.report["iterations"] = iteration + 1
            if (iteration + 1) % check_every == 0 and self.done(pair):
                self.report["stopped_by"] = "target"
                break
        progress.close()
        if accelerator.num_processes > 1:
            # Gradients are all-reduced, but BatchNorm statistics follow DistributedDataParallel's rule (process 0's
            # are copied at each forward pass): copy them once more, so every process ends with the same model.
            for buffer in pair.buffers():
                broadcast(buffer, from_process=0)
        pair.eval()
        if self.report["stopped_by"] != "target":
            logger.warning(
                f"gan_cascade ran all {config.max_iterations} iterations without meeting its stopping rule "
                f"({self.report.get('last_check')}); raise `max_iterations` or `learning_rate` in `method_kwargs`."
            )

    def fake_target(self, players: Players, n: int, classes: torch.Tensor) -> float:
        if self.config.fake_label == "zero":
            return 0.0
        labels = random_labels(players, n, classes)
        with torch.no_grad():
            return torch.sigmoid(players.discriminate(players.generate(players.noise(n), labels), labels)).mean().item()

    @torch.no_grad()
    def done(self, pair: GANPair) -> bool:
        """The stopping rule (module docstring, step 4); the values checked go in the report."""
        config, trainer = self.config, self.trainer
        forget_classes = trainer.split.forget_classes
        if self.class_level:
            labels = cycled(forget_classes, config.check_samples) if pair.config.conditional else None
            logits = judge_outputs(trainer.judge, pair.sample(config.check_samples, labels))[0]
            check = self.agreed({"forget_share": float(np.isin(logits.argmax(-1), forget_classes).mean())})
            stop = check["forget_share"] <= config.forget_share_target
        else:
            forget_score = float(discriminator_probabilities(pair, *self.forget_rows).mean())
            if config.item_stop == "substitutes":
                images, labels = self.substitute_rows
                reference = float(discriminator_probabilities(pair, images, labels).mean())
            else:
                fake_labels = random_labels(pair.players(), config.check_samples, torch.unique(self.forget_rows[1]))
                generated = pair.sample(config.check_samples, fake_labels)
                reference = float(discriminator_probabilities(pair, generated, fake_labels).mean())
            check = self.agreed({"forget_discriminator_score": forget_score,
                                 f"{config.item_stop}_discriminator_score": reference})  # fmt: skip
            stop = check["forget_discriminator_score"] <= check[f"{config.item_stop}_discriminator_score"]
        self.report["last_check"] = check
        pair.train()
        return stop

    def agreed(self, values: dict) -> dict:
        """`values` averaged over processes: each process samples its own images, and all must stop together (a
        process that stopped alone would leave the others waiting in their next gradient all-reduce)."""
        accelerator = self.trainer.accelerator
        if accelerator.num_processes == 1:
            return values
        local = torch.tensor(list(values.values()), dtype=torch.float32, device=self.trainer.args.device)
        return dict(zip(values, accelerator.reduce(local, reduction="mean").tolist(), strict=True))


@dataclass
class SubstitutePools:
    """For each unlearning sample, the retained rows that may stand in for it (step 2 of the module docstring)."""

    pools: list[torch.Tensor]
    #: Every retained row that stands in for some unlearning sample.
    candidates: torch.Tensor

    def draw(self, removed: torch.Tensor) -> torch.Tensor:
        """One substitute (a retained row index) for each unlearning sample in `removed`."""
        picks = [pool[torch.randint(len(pool), (1,))] for pool in (self.pools[int(i)] for i in removed)]
        return torch.cat(picks).to(removed.device)


def substitute_pools(forget_labels: torch.Tensor, retain_labels: torch.Tensor, class_level: bool) -> SubstitutePools:
    """Item unlearning: retained rows of the sample's class (any retained row if its class has none left); class
    unlearning: retained rows of the other classes (every retained row, since none is of a forgotten class)."""
    every_row = torch.arange(len(retain_labels))
    by_class = {int(c): torch.nonzero(retain_labels.cpu() == c).flatten() for c in torch.unique(forget_labels)}
    pools = [
        every_row if class_level or not len(by_class[int(label)]) else by_class[int(label)]
        for label in forget_labels.cpu()
    ]
    candidates = every_row if class_level else torch.unique(torch.cat(pools))
    return SubstitutePools(pools, candidates)


register_method(
    "gan_cascade",
    GANCascadeConfig,
    GANCascade,
    description="GANs: cascaded discriminator unlearning / learning and generator steps, with a fake label and "
    "substitutes (items or classes).",
    paper="https://arxiv.org/abs/2308.09881",
    citation='Hui Sun, Tianqing Zhu, Wenhan Chang, Wanlei Zhou: "Generative Adversarial Networks Unlearning", '
    "IEEE TDSC 2025 (arXiv 2308.09881).",
    limitations="The paper's full text and code are not public: the fake label target, the substitution, the learning "
    "step and the stopping rules are our reconstruction (marked [R] in `hf_unlearn/methods/gan_cascade.py`), "
    'grounded in Kong & Chaudhuri, "Data Redaction from Pre-trained GANs" (2023).',
)
