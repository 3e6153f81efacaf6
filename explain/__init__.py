"""Where the classifier looked: Grad-CAM, Guided Grad-CAM and LIME maps, and overlays for reviewers."""
from explain.base import ExplainError
from explain.gradcam import grad_cam
from explain.guided import guided_grad_cam
from explain.lime import LimeExplanation, lime

__all__ = ["ExplainError", "LimeExplanation", "grad_cam", "guided_grad_cam", "lime"]
