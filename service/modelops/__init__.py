"""Model operations off the request path: drift statistics, A/B comparison, reports, jobs."""
