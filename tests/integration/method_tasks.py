"""Tasks that are not plain functions, for the start-up checks: workers import them by name."""

import functools

from .worker_tasks import record


class Jobs:
    def run(self) -> None:
        record("Jobs.run")

    @classmethod
    def sweep(cls) -> None:
        record("Jobs.sweep")

    def __call__(self) -> None:
        record("Jobs()")


jobs = Jobs()


def greet(name: str) -> None:
    record("greet", who=name)


greet_ada = functools.partial(greet, "ada")
