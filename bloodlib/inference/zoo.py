"""Placeholder replaced below."""
def missing_model_hint(task: str) -> str:
    return ""
