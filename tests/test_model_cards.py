"""The example cards in model_cards/ match what the templates render from their recorded runs (regenerate with
`python -m hf_unlearn.hub model_cards` after a template change), and a rendered card is well formed."""

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from hf_unlearn.hub import CARD_FILE, RESULTS_FILE, card_data, render_card

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "model_cards").glob(f"*/{RESULTS_FILE}"))


def test_there_are_examples_for_both_modalities():
    modalities = {json.loads(path.read_text())["modality"] for path in EXAMPLES}
    assert len(EXAMPLES) >= 3 and modalities == {"image", "audio"}


@pytest.mark.parametrize("results", EXAMPLES, ids=lambda path: path.parent.name)
def test_example_cards_match_their_templates(results):
    context = json.loads(results.read_text())
    committed = (results.parent / CARD_FILE).read_text()
    assert render_card(context).content == ModelCard(committed).content, (
        f"{results.parent.name}: the templates changed; run `python -m hf_unlearn.hub model_cards` and commit."
    )
    assert context["plot"] and (results.parent / context["plot"]).read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("results", EXAMPLES, ids=lambda path: path.parent.name)
def test_cards_keep_forget_and_retain_results_apart_and_say_what_they_must(results):
    context = json.loads(results.read_text())
    card = ModelCard((results.parent / CARD_FILE).read_text())
    splits = [result.dataset_split for result in card.data.eval_results]
    assert {f"{context['dataset']['eval_split']}-forget", f"{context['dataset']['eval_split']}-retain"} <= set(splits)
    # The YAML round trip keeps every result (none merged away).
    reparsed = ModelCard(str(card)).data.eval_results
    assert len(reparsed) == len(card_data(context).eval_results)
    for needed in ("## What was forgotten", "## Measured results", "## Quick start", "not a certified deletion",
                   "## Citation", context["method"]):  # fmt: skip
        assert needed in card.text, needed
    if context["method"] == "gppu":
        assert "reconstruction" in card.text  # which steps are ours, not the withdrawn paper's
    # A model saved with its processor is used through a pipeline; one without is given tensors shaped like its data.
    if context.get("inputs", {"processor": True})["processor"]:
        assert f'pipeline("{context["modality"]}-classification"' in card.text
    else:
        shape = ", ".join(map(str, context["inputs"]["shape"]))
        assert f'{context["inputs"]["name"]} = torch.zeros(1, {shape})' in card.text


def test_a_measured_retrain_reference_appears_in_the_card(trained, digits, make_args, tmp_path):
    from hf_unlearn import UnlearningTrainer

    reference = trained("resnet")  # any second model stands in for a retrained one here
    trainer = UnlearningTrainer(
        trained("resnet"), make_args("gppu", output_dir=str(tmp_path / "out")), train_dataset=digits["train"],
        eval_dataset=digits["test"], forget_classes=[3],
    )  # fmt: skip
    trainer.unlearn()
    assert "retrain reference" not in render_card_of(trainer)
    gaps = trainer.evaluate_unlearning(reference_model=reference)
    card = render_card_of(trainer)
    assert "| metric | original | unlearned | retrain reference | good value |" in card
    assert (
        f"Mean gap to the retrain reference (forget-train, retain-train and test accuracy, entropy MIA): {100 * gaps['mean_gap']:.2f} points"
        in card
    )


def render_card_of(trainer) -> str:
    trainer.create_model_card()
    return (Path(trainer.args.output_dir) / CARD_FILE).read_text()


@pytest.mark.parametrize("original", [{}, {"per_class_accuracy": {"zero": 0.9}}])
def test_the_plot_draws_only_original_bars_that_were_measured(original, tmp_path):
    """Without the original's measurement (`eval_before_unlearn=False`) the plot has no 'original' series at all, and a
    class the original was not measured on gets no bar: never a bar at 0 % that nobody measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hf_unlearn.hub import _draw_per_class

    figures = []

    class Keep:  # plt, but the figure stays open to be looked at
        def __getattr__(self, name):
            return getattr(plt, name)

        def subplots(self, *args, **kwargs):
            figures.append(plt.subplots(*args, **kwargs))
            return figures[-1]

        def close(self, figure):
            pass

    context = {"model_id": "m", "metrics": {"per_class_accuracy": {"zero": 0.95, "one": 0.0}},
               "original_metrics": original, "forget": {"classes": ["one"], "unlearned_before": []}}  # fmt: skip
    _draw_per_class(Keep(), context, tmp_path / "plot.png")
    _, axes = figures[0]
    heights = [bar.get_height() for bar in axes.patches]
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    if original:
        assert labels == ["original", "unlearned"] and heights[:1] == [90.0] and heights[1] != heights[1]  # NaN: none
    else:
        assert labels == ["unlearned"] and heights == [95.0, 0.0]
    plt.close(figures[0][0])


@pytest.mark.parametrize("main_input, template", [("pixel_values", "image"), ("input_values", "audio"),
                                                  ("input_features", "audio")])  # fmt: skip
def test_audio_classifiers_that_read_spectrogram_features_get_the_audio_card(main_input, template):
    """Whisper's and Wav2Vec2-BERT's audio classifiers read `input_features`, not waveforms: still audio."""
    from types import SimpleNamespace

    from hf_unlearn.kinds import get_kind

    classifier = get_kind("classifier")
    assert classifier.card_template(SimpleNamespace(main_input_name=main_input)) == template
    assert classifier.pipeline_tag(SimpleNamespace(main_input_name=main_input)) == f"{template}-classification"
