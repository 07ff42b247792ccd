"""The task runner and the worker process that runs it."""
