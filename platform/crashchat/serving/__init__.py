"""Ray Serve: checkpoints as autoscaled replica groups behind one routing HTTP endpoint.

Imports run one way: ``lifecycle`` (up/down) -> ``builder`` (the application and its Serve
config) -> ``app`` (the router) -> ``deployments``, ``catalog``, ``requests``, ``openai_api``.
"""
