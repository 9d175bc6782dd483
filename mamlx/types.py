"""Type aliases shared across mamlx."""

from typing import Any

import jax

Array = jax.Array
PRNGKey = jax.Array
Params = Any  # a pytree of arrays
Metrics = dict[str, jax.Array]
