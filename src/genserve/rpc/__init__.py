"""gRPC plumbing shared by every gRPC door (the main server's and the cluster's): one server
builder (message limits, keepalive, health, reflection, ports, TLS) and one abort helper that maps
GenserveError onto a status. Imports only errors; the doors import it, it imports no door.
"""
