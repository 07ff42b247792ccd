"""The deadline engine and the dispatcher process that runs it (imports no task code)."""
