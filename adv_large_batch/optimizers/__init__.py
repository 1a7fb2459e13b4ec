"""Layer-wise adaptive optimizers, learning-rate rules and their CLI config (ScaLA §3.1,
"Outer Minimization via Groupwise Adaptive Learning Rates", appendix B/C; ConAdv §4.1,
LARS).

```python
from adv_large_batch.optimizers import OptimizerConfig, build_optimizer

optimizer = build_optimizer(OptimizerConfig(), total_steps=1000, global_batch_size=1024)
```
"""

from adv_large_batch.optimizers.config import OptimizerConfig
from adv_large_batch.optimizers.diagnostics import TrustRatioLogger
from adv_large_batch.optimizers.factory import build_optimizer, build_schedule
from adv_large_batch.optimizers.lamb import LAMB
from adv_large_batch.optimizers.lars import LARS
from adv_large_batch.optimizers.param_groups import (
    DEFAULT_NO_ADAPT_PATTERNS,
    DEFAULT_NO_DECAY_PATTERNS,
    ParameterGroup,
    PathDecayAdamW,
    PathDecaySGD,
    describe_parameter_groups,
    parameter_groups,
)
from adv_large_batch.optimizers.recipes import (
    IMAGE_OPTIMIZER_DEFAULTS,
    image_optimizer_config,
    lars_recipe,
    resolve_recipe,
)
from adv_large_batch.optimizers.schedules import (
    WarmupLinearDecay,
    WarmupPolynomialDecay,
    scale_learning_rate,
)

__all__ = [
    "DEFAULT_NO_ADAPT_PATTERNS",
    "DEFAULT_NO_DECAY_PATTERNS",
    "IMAGE_OPTIMIZER_DEFAULTS",
    "LAMB",
    "LARS",
    "OptimizerConfig",
    "ParameterGroup",
    "PathDecayAdamW",
    "PathDecaySGD",
    "TrustRatioLogger",
    "WarmupLinearDecay",
    "WarmupPolynomialDecay",
    "build_optimizer",
    "build_schedule",
    "describe_parameter_groups",
    "image_optimizer_config",
    "lars_recipe",
    "parameter_groups",
    "resolve_recipe",
    "scale_learning_rate",
]
