"""Video media: probing, frame sampling, decoding, model-input preparation, the Ray Data pipeline."""
