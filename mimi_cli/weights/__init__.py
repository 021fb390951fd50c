"""Weight files: finding them, reading every container (safetensors, Core ML), checking and writing them.

Model-independent: the model packages map the tensors' names onto their own
(see ``mimi_cli.models.mimi.checkpoint``).
"""

from mimi_cli.weights.resolve import resolve_weights, weights_files, weights_id
from mimi_cli.weights.source import open_weights
from mimi_cli.weights.tensors import TensorEntry, WeightFile

__all__ = ["TensorEntry", "WeightFile", "open_weights", "resolve_weights", "weights_files", "weights_id"]
