"""Models: backbones and freezing, heads, training to convergence with exact resume."""
