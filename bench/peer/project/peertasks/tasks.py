from django_qstash import stashed_task


@stashed_task
def noop() -> dict[str, object]:
    """Do nothing, like the service's no-op job: a delivery costs only the library's work."""
    return {}
