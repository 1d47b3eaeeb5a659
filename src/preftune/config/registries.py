"""Every registry's names as plain data: what each flag chooses from and where each choice lives.

preftune.config reads these for the flags' choices and --help without importing torch or a wing; each
registry is built from its table here (dpo/losses.py LOSSES, dpo/engines ENGINES, data/adapters.py
ADAPTERS, data/columns.py COLUMNS, runs/trackers.py PACKAGES, precision.py DTYPES), so a name is
written once. Adding a loss, an engine, a format or a tracker starts with one line here
(docs/architecture.md). This module imports nothing.
"""

# --loss → its function in preftune.dpo.losses (equations and settings: docs/losses.md)
LOSSES = {"sigmoid": "sigmoid_loss", "hinge": "hinge_loss", "ipo": "ipo_loss", "sigmoid_norm": "sigmoid_norm_loss",
          "rdpo": "rdpo_loss", "simpo": "simpo_loss", "ld_dpo": "ld_dpo_loss"}
# --engine → the module whose train(job) runs it (imported only when that engine trains)
# engine → objective → the module whose train(job) runs it (TrainJob.objective: "dpo" or "sft")
ENGINES = {"fast": {"dpo": "preftune.dpo.engines.fast", "sft": "preftune.dpo.engines.fast"},
           "trl": {"dpo": "preftune.dpo.engines.trl", "sft": "preftune.dpo.engines.trl_sft"}}
# The losses each engine trains: the fast engine all; TRL's DPOTrainer has no R-DPO or SimPO
# (engines/trl.py TRL_LOSSES maps these to TRL's loss_type). Checked with the config, before any work.
ENGINE_LOSSES = {"fast": tuple(LOSSES), "trl": ("sigmoid", "hinge", "ipo", "sigmoid_norm", "ld_dpo")}
# --format → its adapter in preftune.data.adapters, in the order detection tries them (preftune_pairs
# before prompt_chosen_rejected: its columns are a superset)
FORMATS = ("summarize_from_feedback", "preftune_pairs", "prompt_chosen_rejected", "hh_rlhf", "conversational",
           "ultrafeedback")
# --column-map NAMEs: every column some adapter reads
COLUMNS = ("prompt", "chosen", "rejected", "post_id", "prompt_id", "score_chosen", "score_rejected", "info",
           "summaries", "choice")
# --report-to → the package it needs (preftune.runs.trackers)
TRACKERS = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb", "mlflow": "mlflow"}
# --precision → the torch dtype it computes in (preftune.precision)
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
PRECISION_NAMES = ("auto", *PRECISIONS)
# --precision of the commands that only run models (eval, judge, serve): autocast over fp32 weights
INFERENCE_PRECISION = {
    "default": "auto", "choices": PRECISION_NAMES, "help": "Compute precision of the forward passes: fp32, or "
    "bf16/fp16 autocast over fp32 weights (log-probs in fp32). 'auto': as `--precision auto` of training "
    "(preftune env says what it picks here); eval's 'auto' is the precision the run was trained and validated in."}
