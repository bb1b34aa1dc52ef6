"""Run `medsynth.train.train` in a fresh process and save every variable it ends with (tests' helper).

Fresh processes because TensorFlow fixes its devices at start-up: a test that needs two logical CPU
devices, a second worker of a MultiWorkerMirrored cluster, or a Horovod rank cannot share the test's
interpreter. Usage: python tests/train_worker.py CONFIG_JSON DUMP_PREFIX [--logical-cpus N]
Writes DUMP_PREFIX-<worker>.npz (G's then D's variables, in model order) and DUMP_PREFIX-<worker>.json.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("dump")
    p.add_argument("--logical-cpus", type=int, default=0)
    args = p.parse_args()
    import numpy as np
    import tensorflow as tf

    if args.logical_cpus:
        cpu = tf.config.list_physical_devices("CPU")[0]
        logical = [tf.config.LogicalDeviceConfiguration()] * args.logical_cpus
        tf.config.set_logical_device_configuration(cpu, logical)

    from medsynth.errors import MedsynthError
    from medsynth.train.config import TrainConfig
    from medsynth.train.loop import train

    try:
        result = train(TrainConfig(**json.loads(args.config)))
    except MedsynthError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    worker = int(os.environ.get("HOROVOD_RANK", "0"))
    if "TF_CONFIG" in os.environ:
        worker = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    variables = list(result.generator.variables) + list(result.discriminator.variables)
    np.savez(f"{args.dump}-{worker}.npz", *[v.numpy() for v in variables])
    with open(f"{args.dump}-{worker}.json", "w") as f:
        json.dump({"settings": result.settings, "step": result.step, "metrics": result.metrics}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
