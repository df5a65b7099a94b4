"""Motion stage: audio features -> per-frame expression and head-pose coefficients."""

from sadtalker.motion.audio2exp import Audio2ExpNet, predict_expression
from sadtalker.motion.audio2pose import Audio2PoseNet, draw_pose_noise, num_pose_chunks, predict_pose_motion
from sadtalker.motion.blink import generate_blink_ratio
from sadtalker.motion.coefficients import MotionResult, predict_motion, smooth_pose

__all__ = [
    "Audio2ExpNet",
    "Audio2PoseNet",
    "MotionResult",
    "draw_pose_noise",
    "generate_blink_ratio",
    "num_pose_chunks",
    "predict_expression",
    "predict_motion",
    "predict_pose_motion",
    "smooth_pose",
]
