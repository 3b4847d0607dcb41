"""What a router replica tells its operators: Prometheus metrics, JSON access logs, the
shared list of recent routing decisions, and the fleet view behind ``/dashboard``.

Everything here is per replica and passed explicitly (``Fleet.observer``); nothing is
process-global, so several replicas can run in one test process.
"""
