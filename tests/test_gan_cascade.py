"""gan_cascade and GANPair: the cascade's steps, its stopping rules, the generator metrics and saving / reloading.
The runs are a few iterations on a tiny GAN, judged by a `ConstantJudge`: they check the mechanics and the plumbing of
the metrics, not that a class is forgotten (`benchmarks/gan_cascade.py` measures that)."""

import json

import numpy as np
import pytest
import torch
from conftest import QUIET
from tiny_models import ConstantJudge
from torch import nn

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.examples.digits import DIGIT_NAMES
from hf_unlearn.gan import GANPair, dcgan_pair, train_gan
from hf_unlearn.generative import image_tensors, judge_outputs
from hf_unlearn.methods import gan_cascade
from hf_unlearn.methods.gan_cascade import GANCascadeConfig, substitute_pools
from hf_unlearn.metrics import frechet_distance


@pytest.fixture(scope="module")
def tiny_digits():
    from hf_unlearn.examples.digits import load_digits_dataset

    return load_digits_dataset(image_size=8)


def tiny_gan(conditional=False):
    return dcgan_pair(image_size=8, latent_dim=8, width=4, conditional=conditional, seed=0, labels=DIGIT_NAMES)


def gan_args(tmp_path, **method_kwargs):
    return UnlearnConfig(output_dir=str(tmp_path / "gan"), method="gan_cascade", method_kwargs=method_kwargs,
                         eval_generated_samples=64, report_to=[], **QUIET)  # fmt: skip


def gan_trainer(tmp_path, data, gan=None, judge=None, eval_=False, **target):
    args = gan_args(tmp_path, **target.pop("method_kwargs", {}))
    args.eval_before_unlearn = args.eval_after_unlearn = eval_
    return UnlearningTrainer(gan if gan is not None else tiny_gan(), args, train_dataset=data["train"],
                             eval_dataset=data["test"], judge=judge, **target)  # fmt: skip


class Recorder:
    """Records, for each optimizer step, which network it updates and which parameters hold gradients."""

    def __init__(self, pair):
        self.pair, self.steps, self.targets = pair, [], []

    def optimizers(self, pair, learning_rate):
        recorder = self

        class RecordingAdam(torch.optim.Adam):
            def step(self, closure=None):
                role = (
                    "D" if self.param_groups[0]["params"][0] is next(recorder.pair.discriminator.parameters()) else "G"
                )
                with_grad = {name for name, p in recorder.pair.named_parameters() if p.grad is not None}
                before = {name: p.detach().clone() for name, p in recorder.pair.named_parameters()}
                result = super().step(closure)
                changed = {name for name, p in recorder.pair.named_parameters() if not torch.equal(p, before[name])}
                recorder.steps.append((role, with_grad, changed))
                return result

        return (RecordingAdam(pair.discriminator.parameters(), lr=learning_rate),
                RecordingAdam(pair.generator.parameters(), lr=learning_rate))  # fmt: skip


def test_one_cascade_iteration_updates_d_twice_then_g(tmp_path, tiny_digits, monkeypatch):
    trainer = gan_trainer(tmp_path, tiny_digits, forget_indices=list(range(16)), method_kwargs={"max_iterations": 1})
    pair = trainer.model
    recorder = Recorder(pair)
    monkeypatch.setattr(gan_cascade, "gan_optimizers", recorder.optimizers)
    losses = []
    original_bce = gan_cascade.F.binary_cross_entropy_with_logits

    def recording_bce(logits, targets, *args, **kwargs):
        losses.append(targets.detach().clone())
        return original_bce(logits, targets, *args, **kwargs)

    monkeypatch.setattr(gan_cascade.F, "binary_cross_entropy_with_logits", recording_bce)
    trainer.unlearn()
    assert [role for role, _, _ in recorder.steps] == ["D", "D", "G"]
    for role, _, changed in recorder.steps:
        prefix = "discriminator." if role == "D" else "generator."
        assert changed and all(name.startswith(prefix) for name in changed), (role, changed)
    # (a) the unlearning samples get the fake label 0, their substitutes stay real (1).
    first = losses[0]
    assert torch.equal(first, torch.cat([torch.zeros(16), torch.ones(16)]))
    assert trainer.method.report["iterations"] == 1


def test_fake_label_generated_uses_the_current_generated_score(tmp_path, tiny_digits, monkeypatch):
    trainer = gan_trainer(tmp_path, tiny_digits, forget_indices=list(range(8)),
                          method_kwargs={"max_iterations": 1, "fake_label": "generated"})  # fmt: skip
    targets = []
    original_bce = gan_cascade.F.binary_cross_entropy_with_logits
    monkeypatch.setattr(gan_cascade.F, "binary_cross_entropy_with_logits",
                        lambda logits, t, *a, **k: targets.append(t.detach().clone()) or original_bce(logits, t, *a, **k))  # fmt: skip
    trainer.unlearn()
    fake_part = targets[0][:8]
    assert torch.all(fake_part == fake_part[0]) and 0 < fake_part[0] < 1


def test_class_stopping_rule_follows_the_judge(tmp_path, tiny_digits):
    never_three = gan_trainer(tmp_path, tiny_digits, judge=ConstantJudge(0), forget_classes=[3],
                              method_kwargs={"max_iterations": 20, "check_every": 2, "check_samples": 32})  # fmt: skip
    never_three.unlearn()
    assert never_three.method.report["stopped_by"] == "target"
    assert never_three.method.report["iterations"] == 2
    assert never_three.method.report["last_check"] == {"forget_share": 0.0}
    always_three = gan_trainer(tmp_path, tiny_digits, judge=ConstantJudge(3), forget_classes=[3],
                               method_kwargs={"max_iterations": 4, "check_every": 2, "check_samples": 32})  # fmt: skip
    always_three.unlearn()
    assert always_three.method.report["stopped_by"] == "max_iterations"
    assert always_three.method.report["iterations"] == 4
    assert always_three.method.report["last_check"] == {"forget_share": 1.0}


@pytest.mark.parametrize(
    ("forget_scores", "iterations", "stopped_by"),
    [
        ([0.9, 0.6, 0.4], 15, "target"),  # met at the third check (iteration 15)
        ([0.9, 0.5], 10, "target"),  # "no higher than": an equal score meets the rule
        ([0.6] * 6, 30, "max_iterations"),  # never met: all 30 iterations, one check every 5
    ],
)
def test_item_stopping_rule_compares_with_substitutes(forget_scores, iterations, stopped_by, tmp_path, tiny_digits,
                                                      monkeypatch):  # fmt: skip
    """Items stop at the first check (every `check_every` iterations) where the discriminator scores the unlearning
    samples no higher than their substitutes; `max_iterations` caps the run. The scores are scripted: the substitutes
    always get 0.5, the unlearning samples the next of `forget_scores` at each check."""
    trainer = gan_trainer(tmp_path, tiny_digits, forget_indices=list(range(32)),
                          method_kwargs={"max_iterations": 30, "check_every": 5})  # fmt: skip
    scores, checked_at = iter(forget_scores), []

    def scripted(pair, images, labels, batch_size=500):
        if images is trainer.method.forget_rows[0]:  # the unlearning samples are scored first at each check
            checked_at.append(trainer.method.report["iterations"])
            return np.array([next(scores)])
        assert images is trainer.method.substitute_rows[0]  # the default `item_stop="substitutes"`
        return np.array([0.5])

    monkeypatch.setattr(gan_cascade, "discriminator_probabilities", scripted)
    trainer.unlearn()
    report = trainer.method.report
    assert checked_at == list(range(5, iterations + 1, 5))
    assert (report["iterations"], report["stopped_by"]) == (iterations, stopped_by)
    assert report["last_check"] == {"forget_discriminator_score": forget_scores[len(checked_at) - 1],
                                    "substitutes_discriminator_score": 0.5}  # fmt: skip


def test_substitute_pools():
    forget_labels = torch.tensor([1, 2, 5])
    retain_labels = torch.tensor([1, 1, 2, 3, 4])
    items = substitute_pools(forget_labels, retain_labels, class_level=False)
    assert items.pools[0].tolist() == [0, 1] and items.pools[1].tolist() == [2]
    assert items.pools[2].tolist() == [0, 1, 2, 3, 4]  # no retained row of class 5 left: any retained row
    assert items.candidates.tolist() == [0, 1, 2, 3, 4]
    assert substitute_pools(torch.tensor([1]), retain_labels, class_level=False).candidates.tolist() == [0, 1]
    drawn = items.draw(torch.tensor([0, 1, 1, 0]))
    assert retain_labels[drawn].tolist() == [1, 2, 2, 1]
    classes = substitute_pools(torch.tensor([3, 3]), retain_labels, class_level=True)
    assert all(pool.tolist() == [0, 1, 2, 3, 4] for pool in classes.pools)


def test_conditional_gan_run_records_the_judges_metrics_and_a_failed_forget_check(tmp_path, tiny_digits):
    """Plumbing, not unlearning: the judge calls every image "three", so the metrics before and after are its
    constant calls, and the forget check after the run fails and is recorded as such."""
    gan = train_gan(tiny_gan(conditional=True), tiny_digits["train"], steps=20, progress=False)
    trainer = gan_trainer(tmp_path, tiny_digits, gan=gan, judge=ConstantJudge(3), eval_=True, forget_classes=["three"],
                          method_kwargs={"max_iterations": 2, "check_every": 1, "check_samples": 16})  # fmt: skip
    output = trainer.unlearn()
    for metrics in (output.original_metrics, output.metrics):
        assert metrics["forget_share"] == 1.0  # every sample "generated for three" is judged three
        assert metrics["retain_judge_accuracy"] == 0.0  # the judge calls every retained-class sample "three"
        assert metrics["sampling"]["samples"] == 64
        assert np.isfinite(metrics["frechet_distance"]) and 0 <= metrics["discriminator_attack_auc"] <= 1
    # The judge still sees "three" in every sample: the forget check fails and the class is not recorded as unlearned.
    assert output.forgotten is False and output.metrics["forget_check"]["forget_share"] == 1.0
    assert not getattr(trainer.model.config, "unlearned_classes", None)


def test_pair_saves_and_reloads_through_the_trainer(tmp_path, tiny_digits):
    trainer = gan_trainer(tmp_path, tiny_digits, forget_indices=[0, 1, 2], method_kwargs={"max_iterations": 1})
    trainer.unlearn()
    trainer.save_model()
    reloaded = GANPair.from_pretrained(trainer.args.output_dir)
    assert torch.equal(reloaded.sample(4, seed=1), trainer.model.sample(4, seed=1))
    images = tiny_digits["test"].with_format("torch")["pixel_values"][:5]
    assert torch.equal(reloaded.discriminate(images), trainer.model.discriminate(images))
    # A saved GAN is also accepted as a path, and runs again from there (the constant judge never sees a "seven").
    again = UnlearningTrainer(trainer.args.output_dir, gan_args(tmp_path, max_iterations=1), judge=ConstantJudge(0),
                              train_dataset=tiny_digits["train"], eval_dataset=tiny_digits["test"],
                              forget_classes=["seven"])  # fmt: skip
    assert isinstance(again.model, GANPair)
    result = again.unlearn()
    assert result.metrics["forget_share"] == 0.0
    # The judge never saw a "seven" in the original's samples either: nothing shows forgetting, so nothing is recorded
    assert result.forgotten is None and result.metrics["forget_check"]["original_at_threshold"] is True
    assert not getattr(again.model.config, "unlearned_classes", None)


class PlainGenerator(nn.Module):
    def __init__(self, latent_dim, size):
        super().__init__()
        self.size, self.linear = size, nn.Linear(latent_dim, size * size)

    def forward(self, noise):
        return torch.sigmoid(self.linear(noise)).reshape(len(noise), 1, self.size, self.size)


class PlainDiscriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 1)

    def forward(self, images):
        return self.linear(images.flatten(1))


def test_own_modules_are_wrapped_and_rebuilt(tmp_path):
    generator = PlainGenerator(4, 8)
    with pytest.raises(ValueError, match="generator_kwargs"):
        GANPair.wrap(generator, PlainDiscriminator(), latent_dim=4, labels=10)
    pair = GANPair.wrap(generator, PlainDiscriminator(), latent_dim=4, labels=10,
                        generator_kwargs={"latent_dim": 4, "size": 8})  # fmt: skip
    pair.save_pretrained(tmp_path / "pair")
    # The classes are the test's, not hf-unlearn's: building them from config.json needs trust_remote_code.
    with pytest.raises(ValueError, match=r"not one of hf-unlearn's own GAN modules.*trust_remote_code=True"):
        GANPair.from_pretrained(tmp_path / "pair")
    reloaded = GANPair.from_pretrained(tmp_path / "pair", trust_remote_code=True)
    assert isinstance(reloaded.generator, PlainGenerator)
    assert torch.equal(reloaded.sample(3, seed=0), pair.sample(3, seed=0))
    # A checkpoint that cannot say how to build a module: the error names the fix, and the fix works.
    config = json.loads((tmp_path / "pair" / "config.json").read_text())
    (tmp_path / "pair" / "config.json").write_text(json.dumps({**config, "generator_class": None}))
    with pytest.raises(ValueError, match=r"GANPair.from_pretrained\(path, generator=MyGenerator"):
        GANPair.from_pretrained(tmp_path / "pair", trust_remote_code=True)
    # Both modules passed built: nothing named by the config is imported, no trust needed.
    given = GANPair.from_pretrained(tmp_path / "pair", generator=PlainGenerator(4, 8),
                                    discriminator=PlainDiscriminator())  # fmt: skip
    assert torch.equal(given.sample(3, seed=0), pair.sample(3, seed=0))


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-8)
    shifted = a + np.array([3.0, 0, 0])
    assert frechet_distance(shifted, a) == pytest.approx(9.0, rel=1e-6)
    # Against the textbook formula with scipy's matrix square root, on two different covariances.
    from scipy.linalg import sqrtm

    b = rng.normal(size=(4000, 3)) @ np.array([[2.0, 0.3, 0], [0, 1.0, 0.5], [0, 0, 0.5]])
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    mean_gap = a.mean(0) - b.mean(0)
    expected = mean_gap @ mean_gap + np.trace(cov_a + cov_b - 2 * np.real(sqrtm(cov_a @ cov_b)))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_judge_features_are_the_head_input(tiny_digits):
    judge = ConstantJudge(1)
    images = tiny_digits["test"].with_format("torch")["pixel_values"][:10]
    logits, features = judge_outputs(judge, images)
    assert features.shape == (10, 64) and np.allclose(features, images.flatten(1).numpy())
    assert (logits.argmax(-1) == 1).all()


def test_non_finite_samples_are_not_judged(tiny_digits):
    """A NaN image would give NaN logits, whose argmax is class 0: a forget class could look forgotten. Refused, as
    are NaN logits from a broken judge."""
    images = tiny_digits["test"].with_format("torch")["pixel_values"][:10].clone()
    images[3, 0, 0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="1 of 10 images given to the judge hold NaN"):
        judge_outputs(ConstantJudge(3), images)
    broken = ConstantJudge(3)
    with torch.no_grad():
        broken.head.bias[0] = float("inf")
        broken.head.bias[1] = -float("inf")
    with pytest.raises(RuntimeError, match="judge's logits hold NaN or infinite"):
        judge_outputs(broken, images[:3])


def test_bad_input(tmp_path, tiny_digits, trained):
    with pytest.raises(ValueError, match="judge="):
        gan_trainer(tmp_path, tiny_digits, forget_classes=[3]).unlearn()
    with pytest.raises(ValueError, match="drop `judge`"):
        UnlearningTrainer(trained("resnet"), gan_args(tmp_path), train_dataset=tiny_digits["train"],
                          eval_dataset=tiny_digits["test"], judge=ConstantJudge(0), forget_classes=[3])  # fmt: skip
    # A judge of other classes (another count, or the same names in another order) would count its ids as the GAN's.
    judge = trained("resnet")
    judge.config.id2label = {i: name for i, name in enumerate(DIGIT_NAMES[:5])}
    with pytest.raises(ValueError, match="`judge` has 5 classes, the generator 10"):
        gan_trainer(tmp_path, tiny_digits, gan=tiny_gan(True), judge=judge, forget_classes=[3])
    # The count is checked whatever names either has: a generator of default LABEL_i names, a judge without a config
    # (its head's outputs); one class more in the generator is named as what it usually is, a null class.
    unnamed = dcgan_pair(image_size=8, latent_dim=8, width=4, conditional=True, seed=0, labels=10)
    with pytest.raises(ValueError, match="`judge` has 5 classes, the generator 10"):
        gan_trainer(tmp_path, tiny_digits, gan=unnamed, judge=judge, forget_classes=[3])
    eleven = dcgan_pair(image_size=8, latent_dim=8, width=4, conditional=True, seed=0, labels=11)
    with pytest.raises(ValueError, match="`judge` has 10 classes, the generator 11.*null-class"):
        gan_trainer(tmp_path, tiny_digits, gan=eleven, judge=ConstantJudge(0), forget_classes=[3])
    judge.config.id2label = dict(enumerate(DIGIT_NAMES[::-1]))
    with pytest.raises(ValueError, match="0: judge 'nine' vs generator 'zero'"):
        gan_trainer(tmp_path, tiny_digits, gan=tiny_gan(True), judge=judge, forget_classes=[3])
    judge.config.id2label = dict(enumerate(DIGIT_NAMES))
    gan_trainer(tmp_path, tiny_digits, gan=tiny_gan(True), judge=judge, forget_classes=[3])  # its own classes: taken
    without_pixels = tiny_digits["train"].rename_column("pixel_values", "input_features")
    with pytest.raises(ValueError, match="reads images from a 'pixel_values' column"):
        image_tensors(without_pixels)
    with pytest.raises(ValueError, match="fake_label"):
        GANCascadeConfig(fake_label="one")
    with pytest.raises(ValueError, match="max_iterations"):
        GANCascadeConfig(max_iterations=0)
    with pytest.raises(ValueError, match="peft"):
        UnlearnConfig(output_dir=str(tmp_path), method="gan_cascade", peft_config={"r": 4})


def test_gan_card_reports_generator_metrics(tmp_path, tiny_digits):
    from huggingface_hub import ModelCard

    trainer = gan_trainer(tmp_path, tiny_digits, judge=ConstantJudge(0), eval_=True, forget_classes=["three"],
                          method_kwargs={"max_iterations": 1, "check_every": 1, "check_samples": 16})  # fmt: skip
    result = trainer.unlearn()
    files = trainer.create_model_card(dataset="sklearn-digits")
    assert "per_class_accuracy.png" in files
    card = ModelCard((tmp_path / "gan" / "README.md").read_text())
    assert card.data.pipeline_tag == "unconditional-image-generation" and card.data.library_name == "hf-unlearn"
    recorded = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert recorded["frechet_distance"] == pytest.approx(result.metrics["frechet_distance"], abs=1e-4)
    assert recorded["forget_share"] == 0.0
    assert "| judge: samples showing a forget class (conditional: of those generated for it) | 0.0 % | 0.0 % |" in card.text
    assert "64 samples (one generator pass from N(0, I) noise, seed 42)" in card.text
    assert "GANPair.from_pretrained" in card.text and "Per-class share of generated samples" in card.text
    assert "| zero | 100.0 % | 100.0 % |" in card.text  # the judge calls every sample "zero"


def test_generator_rows_are_read_through_the_datasets_own_transform(tiny_digits):
    """`with_transform` is how the Hub's image tutorials prepare pixels; the Trainer's loop reads through it, so the
    generators' tensors (gan_cascade's rows, the Frechet distance's real rows) must too, not the raw column."""
    raw_images, raw_labels = image_tensors(tiny_digits["test"])

    def doubled(batch):
        return {**batch, "pixel_values": [2 * torch.as_tensor(image) for image in batch["pixel_values"]]}

    images, labels = image_tensors(tiny_digits["test"].with_transform(doubled))
    torch.testing.assert_close(images, 2 * raw_images)
    assert torch.equal(labels, raw_labels)
