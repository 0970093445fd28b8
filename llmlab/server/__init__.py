"""`llmlab serve`: the playground (FastAPI + a prebuilt frontend) and an OpenAI-compatible API."""
