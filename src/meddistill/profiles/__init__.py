"""The size profiles shipped as YAML files beside this module (``<name>.yaml``): the shared
sections at each scale. Each method's own settings at a scale are the presets of its registration
(:func:`meddistill.distill.register_method`).
"""

from meddistill.config import PROFILES  # noqa: F401
