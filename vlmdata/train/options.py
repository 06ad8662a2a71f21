"""The choices of training settings, in a module of their own so that the command line reads them without torch."""

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
# "all" is every integration transformers finds installed (wandb, mlflow, ...).
REPORTERS = ("none", "tensorboard", "all")
ATTENTION = ("sdpa", "sdpa_packed", "eager", "flash_attention_2", "flex_attention")
