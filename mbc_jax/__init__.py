"""mbc-jax: memorization during supervised fine-tuning, and Memorization-Based Curriculum training."""

from mbc_jax.errors import UserError, exit_code

__version__ = "0.1.0"

__all__ = ["UserError", "exit_code", "__version__"]
