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
    pipeline = f'pipeline("{context["modality"]}-classification"'
    assert pipeline in card.text
