"""Training pieces shared by distillation and language experts: encoder-output cache, datasets, loop."""
