"""Parameter-efficient fine-tuning: parameter and memory accounting for real configs."""
