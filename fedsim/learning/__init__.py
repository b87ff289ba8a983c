"""The model and its training: the Flax MLP with an embedding-bag, jitted local training
(plain and DP-SGD), prediction and metrics. JAX lives here; parties that never train
(aggregator, key holders) never import this package."""
