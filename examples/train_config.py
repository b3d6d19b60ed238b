"""An example training configuration, as a user's own code would define it.

Import its flags into SkyDeck (nested models become dotted paths):

    PYTHONPATH=examples python manage.py import_flags train_config:TrainConfig

Then the flag editor offers trainer.optimizer.lr, model.layers, … with their
types, choices and defaults, and refuses a value that does not fit.
"""

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field


class OptimizerName(StrEnum):
    ADAM = "adam"
    ADAMW = "adamw"
    SGD = "sgd"


class Optimizer(BaseModel):
    name: OptimizerName = Field(OptimizerName.ADAMW, description="Which optimizer")
    lr: float = Field(3e-4, description="Peak learning rate")
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)


class Trainer(BaseModel):
    optimizer: Optimizer = Optimizer()
    epochs: int = Field(10, description="Passes over the data")
    batch_size: int = 32
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    compile: bool = False
    grad_clip: float | None = None


class Model(BaseModel):
    layers: int = Field(12, description="Transformer blocks")
    hidden: int = 768
    dropout: float = 0.1


class TrainConfig(BaseModel):
    run_name: str = Field(description="Name of the run in the tracker")
    trainer: Trainer = Trainer()
    model: Model = Model()
    nodes: int = 1
    seed: int | None = 0
