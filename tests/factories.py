import factory
from django.contrib.auth import get_user_model

from clusters.models import Cluster
from experiments.models import ACTIVE_JOB_STATUSES, Experiment, FlagSchema, Job, Sweep


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("correct horse battery")


class ExperimentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Experiment

    name = factory.Sequence(lambda n: f"exp-{n}")
    command = "echo hello"
    flags = factory.LazyFunction(dict)
    backend = "local"
    desired_state = "STOPPED"
    # The cast's "owner" (get-or-create by username): the owner_client may change what factories make.
    owner = factory.SubFactory(UserFactory, username="owner")


class JobFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Job

    experiment = factory.SubFactory(ExperimentFactory)
    attempt = factory.Sequence(lambda n: n + 1)
    generation = 1
    backend = "local"
    name = factory.LazyAttribute(lambda o: f"sd-{o.experiment.name}-{o.attempt}")
    command = "echo hello"
    status = "SUCCEEDED"
    # As the poller leaves it: an ended job's output copy is complete.
    log_complete = factory.LazyAttribute(lambda o: o.status not in ACTIVE_JOB_STATUSES)


class SweepFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Sweep

    name = factory.Sequence(lambda n: f"sweep-{n}")


class FlagSchemaFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = FlagSchema

    namespace = "default"
    path = factory.Sequence(lambda n: f"trainer.flag{n}")
    type = "string"


class ClusterFactory(factory.django.DjangoModelFactory):
    """A cluster as a poll would have recorded it."""

    class Meta:
        model = Cluster

    name = factory.Sequence(lambda n: f"sd-exp-{n}")
    backend = "local"
    status = "UP"
    resources = "local process"
    infra = "local"
