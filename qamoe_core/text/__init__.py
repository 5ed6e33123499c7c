"""The pretrained text encoder (a model part that reads token ids)."""
