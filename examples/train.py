"""A tiny stand-in for a training script: reads key=value flags, prints, exits 0.

SkyDeck passes flags as sorted ``key=value`` arguments; this prints them and
"trains" for a moment so the local backend has something to run. Each step
prints a metric line SkyDeck reads (docs/metrics.md):

    SKYDECK {"step": 3, "loss": 0.71, "accuracy": 0.64, "lr": 0.003}

The loss is made up, but it behaves: it falls fastest for a learning rate
(``lr``, or ``trainer.optimizer.lr``) near 3e-3, barely moves for a tiny one and
diverges for a large one, and more ``layers`` lower the floor it falls to. A sweep
over ``lr`` has a clear winner.

Like a real script it keeps a checkpoint (``checkpoint=``, default
``train-checkpoint.json`` in the working folder, which a cluster keeps across
restarts): a run that was stopped or restarted part-way goes on from its last
step, so its curve continues; a finished run removes its checkpoint.
"""

import json
import math
import os
import random
import sys
import time

flags = dict(arg.split("=", 1) for arg in sys.argv[1:] if "=" in arg)
print("training with", flags, flush=True)
steps = int(flags.get("steps", "3"))
lr = float(flags.get("lr", flags.get("trainer.optimizer.lr", "0.003")))
layers = int(flags.get("layers", flags.get("model.layers", "4")))
noise = random.Random(int(flags.get("seed", "0")))
checkpoint = flags.get("checkpoint", "train-checkpoint.json")

# Speed of learning peaks at lr = 3e-3 and falls away on a log scale either side.
distance = math.log10(max(lr, 1e-12) / 3e-3)
rate = 3.5 * math.exp(-(distance**2) / 0.5) / max(steps, 1)
floor = 0.05 + 0.4 / max(layers, 1)
diverges = lr > 0.3
loss, start = 2.3, 0
run = {"lr": lr, "layers": layers, "steps": steps}
try:
    with open(checkpoint) as fh:
        saved = json.load(fh)
    if saved.get("run") == run and 0 < saved.get("step", 0) < steps:
        loss, start = saved["loss"], saved["step"]
        print(f"resuming from step {start}", flush=True)
except (OSError, ValueError, AttributeError, KeyError, TypeError):
    pass  # no checkpoint (or not ours): start at the beginning

for step in range(start, steps):
    print(f"step {step + 1}/{steps}", flush=True)
    if diverges:
        loss *= 1.0 + 2.0 / max(steps, 1)
    else:
        loss = floor + (loss - floor) * math.exp(-rate)
    shown = loss * (1 + noise.uniform(-0.02, 0.02))
    metrics = {"step": step + 1, "loss": round(shown, 5), "accuracy": round(max(0.0, 1 - shown / 2.3), 5), "lr": lr}
    print("SKYDECK " + json.dumps(metrics), flush=True)
    if checkpoint:
        with open(checkpoint + ".tmp", "w") as fh:
            json.dump({"run": run, "step": step + 1, "loss": loss}, fh)
        os.replace(checkpoint + ".tmp", checkpoint)
    time.sleep(float(flags.get("step_seconds", "1")))
if checkpoint and os.path.exists(checkpoint):
    os.remove(checkpoint)
print("done", flush=True)
