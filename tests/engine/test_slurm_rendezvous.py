"""A trainer started by ``srun`` as one of several tasks joins DDP from Slurm's variables."""

from __future__ import annotations

from one_fast.engine.distributed import first_slurm_host, slurm_rendezvous


def test_srun_tasks_get_torchrun_variables():
    env = {"SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
           "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "123456"}
    assert slurm_rendezvous(env) == {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1",
                                     "MASTER_ADDR": "gpu07", "MASTER_PORT": str(29500 + 3456)}
    assert slurm_rendezvous({**env, "WORLD_SIZE": "4"}) == {}  # torchrun set them already
    assert slurm_rendezvous({**env, "SLURM_STEP_NUM_TASKS": "1"}) == {}
    assert slurm_rendezvous({**env, "MASTER_PORT": "1234"})["MASTER_PORT"] == "1234"
    assert first_slurm_host("node1,node2") == "node1"
    assert first_slurm_host("a-b[3,5-9],c1") == "a-b3"
