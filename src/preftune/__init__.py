"""preftune: preference-tune small causal LMs with DPO, end to end.

The flow, one module per verb:  data (read → adapt → clean → split) → train (engine → run folder)
→ evaluate (held-out preference accuracy) → later: sweep, report, push, serve.
"""

__version__ = "0.1.0"
