"""LoRA fine-tuning from a user's own conversations, and the registry of the adapters it produces.

Independent of `bot`: callers load the base model and pass it (and a psycopg pool for the registry) in.
"""

from training.datasets import Dataset, DatasetError, Example, RowProblem, Split, read_dataset, split_examples
from training.encoding import EncodedExample, encode_example, encode_examples
from training.form import FormRule, generate_replies
from training.pipeline import Prepared, fine_tune, prepare
from training.registry import AdapterNotFound, AdapterRecord, AdapterRegistry
from training.trainer import TrainConfig, TrainResult, train_lora

__all__ = [
    "AdapterNotFound",
    "AdapterRecord",
    "AdapterRegistry",
    "Dataset",
    "DatasetError",
    "EncodedExample",
    "Example",
    "FormRule",
    "Prepared",
    "RowProblem",
    "Split",
    "TrainConfig",
    "TrainResult",
    "encode_example",
    "encode_examples",
    "fine_tune",
    "generate_replies",
    "prepare",
    "read_dataset",
    "split_examples",
    "train_lora",
]
