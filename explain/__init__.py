"""Where the classifier looked: Grad-CAM, Guided Grad-CAM and LIME maps, and overlays for reviewers.

The maps are here; rendering a media item's overlay (PNG, or GIF when animated) is `explain.media`
(`gradcam_overlay` for borderline calls, `explain_image` for the CLI), kept out of this import so the
maps do not load matplotlib.
"""
from explain.base import ExplainError
from explain.gradcam import grad_cam
from explain.guided import guided_grad_cam
from explain.lime import LimeExplanation, lime

__all__ = ["ExplainError", "LimeExplanation", "grad_cam", "guided_grad_cam", "lime"]
