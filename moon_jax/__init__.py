"""moon-jax: reliable sparse training (RigL / SET / static + MOON) in JAX, Flax and Optax."""
__version__ = "0.1.0"
