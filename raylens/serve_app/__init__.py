"""The HTTP ingress: the FastAPI app, its routes and middleware, and its Serve deployment."""
