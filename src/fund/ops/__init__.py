"""Health, readiness and metrics: what an operator and a load balancer ask."""
