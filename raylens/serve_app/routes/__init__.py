"""The HTTP routes, one APIRouter per resource: jobs, search, health."""
