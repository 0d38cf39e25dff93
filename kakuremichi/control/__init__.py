"""Control server: REST API for agents, gateways and tunnels, and the WebSocket that pushes their configs.

`kakuremichi.control.server.serve(settings)` runs it on one port; `python -m kakuremichi.control` is the
command line. Control never carries user traffic.
"""
