"""The request path: decode and preprocess, route to a variant, batch, run the model."""
