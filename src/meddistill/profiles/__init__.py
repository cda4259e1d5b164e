"""The size profiles shipped as YAML files beside this module (``<name>.yaml``)."""

PROFILES = ("tiny", "cpu", "paper")
