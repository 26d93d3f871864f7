"""hf-unlearn: machine unlearning for the Hugging Face stack.

```python
>>> from hf_unlearn import UnlearnConfig, UnlearningTrainer
>>> args = UnlearnConfig(output_dir="out", method="neggrad_plus")
>>> result = UnlearningTrainer(model, args, train_dataset=train, eval_dataset=test, forget_classes=[3]).unlearn()
```
"""

from .config import UnlearnConfig
from .registry import available_methods, get_method, register_method
from .trainer import UnlearningOutput, UnlearningTrainer

__version__ = "0.1.0.dev0"

__all__ = [
    "UnlearnConfig",
    "UnlearningOutput",
    "UnlearningTrainer",
    "available_methods",
    "get_method",
    "register_method",
]
