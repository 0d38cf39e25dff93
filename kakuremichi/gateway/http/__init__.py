"""The gateway's HTTP side: client connections in (HTTP/1.1 and HTTP/2 fronts over one exchange engine),
agent connections out (the upstream pool), and what the gateway answers by itself (error pages)."""
