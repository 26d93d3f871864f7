"""Run by test_hub.py in a fresh process, whose environment points `huggingface_hub` at the loopback test Hub
(HF_ENDPOINT is read when huggingface_hub is imported). `python hub_worker.py MODEL OUTPUT_DIR HUB_MODEL_ID`:
unlearn class 3 of MODEL (a path or an ID on the test Hub) with a short finetune, push, and when the push worked load
the model back by its ID; prints one JSON line with what happened."""

import json
import sys

import numpy as np
import torch
from transformers import AutoModelForImageClassification

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.digits import load_digits_dataset, training_arguments

if __name__ == "__main__":
    torch.set_num_threads(1)
    model_id, output_dir, hub_model_id = sys.argv[1:4]
    data = load_digits_dataset()
    args = UnlearnConfig(
        **training_arguments(output_dir, disable_tqdm=True, max_steps=2), method="finetune", hub_model_id=hub_model_id
    )
    model = AutoModelForImageClassification.from_pretrained(model_id)
    trainer = UnlearningTrainer(model, args, train_dataset=data["train"], eval_dataset=data["test"], forget_classes=[3])
    trainer.unlearn()
    try:
        trainer.push_to_hub(dataset="sklearn-digits")
    except (ValueError, RuntimeError) as error:
        print(json.dumps({"error": type(error).__name__, "message": str(error)}))
        sys.exit(0)
    reloaded = AutoModelForImageClassification.from_pretrained(trainer.hub_model_id).eval()
    pixels = torch.tensor(np.asarray(data["test"][:8]["pixel_values"]), dtype=torch.float32)
    with torch.no_grad():
        same = torch.allclose(reloaded(pixel_values=pixels).logits, trainer.model.eval()(pixel_values=pixels).logits)
    print(json.dumps({"pushed": trainer.hub_model_id, "same_logits": same}))
