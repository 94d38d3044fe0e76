"""mbc-jax: memorization during supervised fine-tuning, and Memorization-Based Curriculum training."""

__version__ = "0.1.0"


class UserError(Exception):
    """An error caused by the user's input: printed as one clear line by the CLI, never a traceback."""
