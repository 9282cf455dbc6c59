"""DreamPose model: image/pose adapter, pose-widened UNet, dual guidance, the diffusers pipeline, builders."""

from dreampose.models.adapter import ImagePoseAdapter
from dreampose.models.guidance import dual_guidance
from dreampose.models.pipeline import (
    DreamPoseOutput,
    DreamPosePipeline,
    make_scheduler,
    null_image_tokens,
    null_pose,
    poses_to_latent,
)
from dreampose.models.unet import expand_conv_in

__all__ = [
    "DreamPoseOutput",
    "DreamPosePipeline",
    "ImagePoseAdapter",
    "dual_guidance",
    "expand_conv_in",
    "make_scheduler",
    "null_image_tokens",
    "null_pose",
    "poses_to_latent",
]
