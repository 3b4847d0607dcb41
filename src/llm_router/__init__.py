"""llm-router: an OpenAI-compatible router for heterogeneous inference fleets."""

__version__ = "0.1.0"
