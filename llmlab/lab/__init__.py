"""The training lab: runs started from the playground, each a worker process running the CLI."""
