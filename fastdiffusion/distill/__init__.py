"""DSNO distillation (Zheng et al. 2023): teacher trajectories, then a one-call neural-operator student.

    fastdiffusion distill trajectories MODEL --out TRAJ     # noise + teacher PF-ODE states at M output times
    fastdiffusion distill train TRAJ --run-dir RUN          # the student, saved as RUN/student.safetensors
    fastdiffusion sample RUN --sampler dsno --nfe 1         # one network call per batch of samples
"""

from .student import (
    DistillConfig,
    DistillTrainer,
    build_student,
    distill,
    select_times,
    time_weights,
    trajectory_loss,
)
from .trajectories import TrajectorySet, generate_trajectories, output_steps, read_manifest, teacher_states

__all__ = ["DistillConfig", "DistillTrainer", "TrajectorySet", "build_student", "distill", "generate_trajectories",
           "output_steps", "read_manifest", "select_times", "teacher_states", "time_weights", "trajectory_loss"]
