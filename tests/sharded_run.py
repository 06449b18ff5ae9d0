"""Runs the smoke training in a subprocess with several (simulated) devices or processes.

Not a test module: ``tests/test_sharding.py`` starts it with ``XLA_FLAGS`` set (the device
count must be fixed before JAX starts). Usage:

  python tests/sharded_run.py WORKDIR DEVICES [PROCESS_ID NUM_PROCESSES PORT]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402


def main(workdir: str, devices: int, process_id: int = 0, num_processes: int = 1,
         port: int = 0) -> None:
    if num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                                   num_processes=num_processes, process_id=process_id)
    from experiments import train
    from experiments.configs import train as train_config
    config = train_config.get_config("smoke")
    config.data.num_clients = 4
    config.run.devices = devices
    config.run.num_epochs = 2
    summary = train.run(config, workdir)
    print("final_accuracy", summary["final_accuracy"], "devices", jax.device_count())


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *(int(a) for a in sys.argv[3:]))
