"""Run by test_hub.py in a fresh process, whose environment points `huggingface_hub` at the loopback test Hub
(HF_ENDPOINT is read when huggingface_hub is imported). `python hub_worker.py MODEL OUTPUT_DIR HUB_MODEL_ID`:
unlearn class 3 of MODEL (a path or an ID on the test Hub) with a short finetune, push, and when the push worked load
the model back by its ID; prints one JSON line with what happened. A saved GAN (`hf_unlearn.gan.GANPair`, a local path)
instead has 8 rows unlearned by one `gan_cascade` iteration, judged by a small untrained classifier."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForImageClassification

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.examples.digits import load_digits_dataset, training_arguments


def push_gan(path, output_dir, hub_model_id, data):
    from hf_unlearn.gan import GANPair

    args = UnlearnConfig(output_dir=output_dir, method="gan_cascade", method_kwargs={"max_iterations": 1},
                         eval_generated_samples=32, hub_model_id=hub_model_id, report_to=[], disable_tqdm=True)  # fmt: skip
    judge = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))
    trainer = UnlearningTrainer(path, args, train_dataset=data["train"], eval_dataset=data["test"], judge=judge,
                                forget_indices=list(range(8)))  # fmt: skip
    trainer.unlearn()
    trainer.push_to_hub(dataset="sklearn-digits")
    reloaded = GANPair.from_pretrained(trainer.hub_model_id)
    same = torch.equal(reloaded.sample(4, seed=0), trainer.model.sample(4, seed=0))
    print(json.dumps({"pushed": trainer.hub_model_id, "same_samples": same}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    model_id, output_dir, hub_model_id = sys.argv[1:4]
    data = load_digits_dataset()
    config = Path(model_id) / "config.json"
    if config.is_file() and json.loads(config.read_text())["model_type"] == "hf_unlearn_gan":
        push_gan(model_id, output_dir, hub_model_id, data)
        sys.exit(0)
    # HUB_WORKER_MODE=flag: `push_to_hub=True` with the token in `hub_token` (not the environment), pushed by
    # `trainer.save_model()` as a Trainer would; otherwise `trainer.push_to_hub()`.
    flag = os.environ.get("HUB_WORKER_MODE") == "flag"
    hub = {"push_to_hub": True, "hub_token": os.environ.pop("HF_TOKEN", None)} if flag else {}
    args = UnlearnConfig(
        **training_arguments(output_dir, disable_tqdm=True, max_steps=2), method="finetune", hub_model_id=hub_model_id,
        **hub,
    )
    model = AutoModelForImageClassification.from_pretrained(model_id)
    trainer = UnlearningTrainer(model, args, train_dataset=data["train"], eval_dataset=data["test"], forget_classes=[3])
    trainer.unlearn()
    try:
        if flag:
            trainer.save_model()
        else:
            trainer.push_to_hub(dataset="sklearn-digits")
    except (ValueError, RuntimeError) as error:
        print(json.dumps({"error": type(error).__name__, "message": str(error)}))
        sys.exit(0)
    reloaded = AutoModelForImageClassification.from_pretrained(trainer.hub_model_id, token=args.hub_token).eval()
    pixels = torch.tensor(np.asarray(data["test"][:8]["pixel_values"]), dtype=torch.float32)
    with torch.no_grad():
        same = torch.allclose(reloaded(pixel_values=pixels).logits, trainer.model.eval()(pixel_values=pixels).logits)
    print(json.dumps({"pushed": trainer.hub_model_id, "same_logits": same}))
