"""Access control in front of tunnels, as sans-IO cores fed a request's parts and a clock: ranked CIDR rules
(policy.py), slow password hashes (passwords.py), signed sessions and share links (tokens.py), brute-force
limits (throttle.py), and the gate that decides each request from them (gate.py) with its pages (pages.py).
Control builds the policies and signs nothing a gateway could not check; every gateway checks every request
itself, with the deployment's key that control pushes."""
