"""LoRA fine-tuning on Ray Train with DeepSpeed, tracked in MLflow."""
