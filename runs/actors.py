"""Who caused something: a person, a worker, a run, or the system itself.

An Actor is built once, where the caller is known (the session's user in a view, the worker's
lease in a job, the sweeper's pass), and handed down to the service that acts. The journal, the
events and the audit log store its label ("user:ada", "worker:host:123", "system:sweeper"), and
rules that compare people (four eyes) compare actors, never labels pieced together in a view.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Actor:
    kind: str  # user, worker, run, system, cli
    name: str
    # The account behind a user actor, for the audit log; None for everything else.
    user: object = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"an actor is one of {', '.join(sorted(KINDS))}, not {self.kind!r}")

    def __eq__(self, other):
        return isinstance(other, Actor) and (self.kind, self.name) == (other.kind, other.name)

    def __hash__(self):
        return hash((self.kind, self.name))

    def __str__(self):
        return self.label

    @property
    def label(self):
        return f"{self.kind}:{self.name}" if self.name else self.kind

    @property
    def is_person(self):
        return self.kind == "user"

    @classmethod
    def for_user(cls, user):
        return cls("user", user.get_username(), user=user)

    @classmethod
    def worker(cls, owner):
        return cls("worker", owner)

    @classmethod
    def run(cls, run_id):
        return cls("run", str(run_id))

    @classmethod
    def system(cls, part):
        return cls("system", part)

    @classmethod
    def from_label(cls, label):
        """The actor a stored label names (for rows written before actors were typed)."""
        kind, _, name = label.partition(":")
        return cls(kind, name) if kind in KINDS else cls("system", label)


# "cli": rows written before command-line actions named a real user (issue 10); nothing acts
# as it any more (runs/management/operators.py).
KINDS = {"user", "worker", "run", "system", "cli"}
SWEEPER = Actor.system("sweeper")
SCHEDULER = Actor.system("scheduler")
EXPIRY = Actor.system("expiry")
