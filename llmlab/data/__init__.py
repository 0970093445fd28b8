"""Text corpora for the lab (tokenizer training, pretraining)."""
