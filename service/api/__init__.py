"""The HTTP surface beside the routes in service.py: request guards, error mapping, feedback."""
