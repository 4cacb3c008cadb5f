"""On-policy distillation: rollouts (student samples) and the distillation losses."""
