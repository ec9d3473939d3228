"""Heads: ways of answering from a frozen encoder's features, solved from sufficient statistics of one frozen pass.

One module per head, one registration line each:

- :mod:`.linear`: the Linear's closed form (LDA), written into the model's own output Linear; what plain
  ``from_pretrained`` loads.
- :mod:`.kept_rows`: the new rows beside the kept, trained rows of a classifier hf_incr did not train (the Linear's
  file, with its rows marked kept).
- :mod:`.kernel`: the kernel LDA head on the encoder's pooled top layers, with its inference code
  (:mod:`.modeling_hf_incr_kernel`) shipped beside the weights.
- :mod:`.beside_kept`: new labels beside the kept rows of a single-label classifier trained elsewhere, from the
  encoder's pooled layers (a gate given no old rows, a fusion given a few of every old label); the kernel head's
  inference code carries it.

They share :mod:`.statistics` (one statistics core and the tensor checks), :mod:`.lda` (one solver) and
:mod:`.files` (one reader and writer); :mod:`.base` holds the interface and the registry.
"""

from .base import HEADS, Head, PassRows, extra_heads, head_files, register_head
from .beside_kept import BesideKeptHead
from .kept_rows import KeptRowsHead
from .kernel import KernelHead
from .linear import LinearHead
from .statistics import ClassStatistics

register_head(LinearHead)
register_head(KernelHead)
register_head(BesideKeptHead)

__all__ = [
    "HEADS",
    "BesideKeptHead",
    "ClassStatistics",
    "Head",
    "KeptRowsHead",
    "KernelHead",
    "LinearHead",
    "PassRows",
    "extra_heads",
    "head_files",
    "register_head",
]
