"""Resource plans: what a run needs (parameters, tokens, GPU memory, disk) before it starts."""

from crashchat.planning.resource_plan import ResourcePlan, build_plan

__all__ = ["ResourcePlan", "build_plan"]
