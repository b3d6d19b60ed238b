"""A tiny stand-in for a training script: reads key=value flags, prints, exits 0.

SkyDeck passes flags as sorted ``key=value`` arguments; this prints them and
"trains" for a moment so the local backend has something to run.
"""

import sys
import time

flags = dict(arg.split("=", 1) for arg in sys.argv[1:] if "=" in arg)
print("training with", flags, flush=True)
steps = int(flags.get("steps", "3"))
for step in range(steps):
    print(f"step {step + 1}/{steps}", flush=True)
    time.sleep(float(flags.get("step_seconds", "1")))
print("done", flush=True)
